"""Re-select twice from stored weights in one SparkSession: the first select pays for a fresh JVM
(class loading, JIT, code generation), the second is what a notebook or a long-lived driver pays.

    python benchmarks/reselect.py --out OUT --target T --raw R [--raw R ...] [--master local[2]]

Prints ``[dsel] select done in X s`` (the select stage) for each, and ``[bench] command took X s`` for
the whole ``dsel select`` (with its table checks, the lock and the run record; see bench.py, which
runs this in a subprocess).
"""
from __future__ import annotations

import argparse
import time

from dsel.config import DselConfig
from dsel.pipeline import execute
from dsel.session import build_session


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--raw", action="append", required=True)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    spark = build_session(args.master, {"spark.ui.showConsoleProgress": "false"}, app_name="dsel-reselect")
    for k, seed in ((20_000, 1), (30_000, 2)):
        cfg = DselConfig.from_mapping({"raw": args.raw, "target": [args.target], "out": args.out,
                                       "num_samples": k, "seed": seed})
        started = time.time()
        execute(spark, cfg, "select")
        print(f"[bench] command took {time.time() - started:.2f}s", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()

"""Selecting from N synthetic weights keeps the driver flat: nothing per document reaches it.

    python benchmarks/driver_memory.py [--rows 10000000] [--k 1000000]

Writes a weights Delta table of N rows (spark.range, two targets), then selects k with the
threshold path (k above dsel.select.SMALL_K), and prints the driver JVM's and the driver Python
process's resident memory before and after, with the time taken.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _rss, _tree  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--k", type=int, default=1_000_000)
    args = parser.parse_args()
    from pyspark.sql import functions as F

    from dsel.select import select
    from dsel.session import build_session

    spark = build_session("local[2]", {"spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "8",
                                       "spark.driver.memory": "2g"})
    jvm = next(p for p in _tree(os.getpid()) if p != os.getpid() and "java" in open(f"/proc/{p}/comm").read())
    path = tempfile.mkdtemp(prefix="dsel-weights-")
    (spark.range(args.rows).select(
        F.format_string("doc-%09d", "id").alias("id"), F.col("id").alias("doc_hash"),
        (F.col("id") % 900 + 50).alias("num_words"), F.array(F.sin("id") * 5, F.cos("id") * 5).alias("log_weights"))
     .write.format("delta").mode("overwrite").save(path))
    weights = spark.read.format("delta").load(path)
    before = (_rss(jvm), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    start = time.time()
    selection = select(weights, ["a", "b"], [1.0, 1.0], num_samples=args.k, seed=0)
    chosen = selection.chosen.agg(F.count("*").alias("n"), F.countDistinct("id").alias("ids"),
                                  F.max("rank").alias("max_rank")).first()
    took = time.time() - start
    after = (_rss(jvm), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(f"rows={args.rows:,} k={args.k:,} selected={chosen['n']:,} distinct_ids={chosen['ids']:,} "
          f"max_rank={chosen['max_rank']:,} seconds={took:.1f}")
    print(f"driver JVM RSS {before[0] / 2**20:,.0f} MB -> {after[0] / 2**20:,.0f} MB (spark.driver.memory=2g); "
          f"driver Python peak RSS {before[1] / 2**20:,.0f} MB -> {after[1] / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()

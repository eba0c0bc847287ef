"""dsel against data-selection 1.0.3, side by side on the same data, per core.

    python benchmarks/bench.py [--size-mb 1024] [--ref-mb 16] [--data /tmp/dsel-bench] [--quick]

Data: the shared corpus replicated with distinct ids (benchmarks/data.py), JSON lines; the
target is 300 held-out sci_abstracts documents.  The reference (num_proc=1, one process) runs
on the first ``--ref-mb`` MB of the same raw files; dsel's kernel runs on that same subset; dsel
end to end runs on Spark local[1] and local[2] over 0.25x, 0.5x and 1x of ``--size-mb``; after
each run, ``reselect.py`` selects twice from its stored weights in one new session (20,000 then
30,000 documents): the first pays for a fresh JVM, the second is a warm re-select.

Throughput per core is work divided by CPU seconds: for the reference and the kernel, this
process's CPU time; for Spark, the CPU time of the whole process tree (driver, JVM, Python
workers), read from /proc.  Prints one table per stage and, last, a machine-readable line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import build  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def subset(raw_dir: str, mb: float, out: Path) -> tuple[str, list[str]]:
    """The first ``mb`` MB of text of the raw files, as one JSON-lines file, and its texts."""
    texts, lines, size = [], [], 0
    for part in sorted(Path(raw_dir).glob("*.jsonl")):
        with open(part, encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line)["text"]
                texts.append(text)
                lines.append(line)
                size += len(text.encode("utf-8"))
                if size >= mb * 1e6:
                    break
        if size >= mb * 1e6:
            break
    out.write_text("".join(lines), encoding="utf-8")
    return str(out), texts


def reference(raw: str, target: str, work: Path, k: int) -> dict:
    """data-selection 1.0.3 in this process (num_proc=1): CPU seconds of fit, score and resample."""
    from data_selection import HashedNgramDSIR

    dsir = HashedNgramDSIR([raw], [target], cache_dir=str(work / "ref-cache"), num_proc=1)
    times = {}
    for stage, call in (("fit", lambda: dsir.fit_importance_estimator(num_tokens_to_fit="auto")),
                        ("score", dsir.compute_importance_weights),
                        ("select", lambda: dsir.resample(out_dir=str(work / "ref-out"), num_to_sample=k,
                                                         cache_dir=str(work / "ref-rs")))):
        start = time.process_time()
        call()
        times[stage] = time.process_time() - start
    return times


def kernel(texts: list[str], target_texts: list[str], hash_kind: str, repeats: int = 5) -> dict:
    """dsel's kernel on one core, CPU seconds after JIT warm-up, the median of ``repeats`` rounds (one
    round of the 16 MB subset is under a second of work, and this machine's speed drifts from one
    second to the next: single rounds of the same code measured 35 and 55 MB/s back to back).

    ``single``: what the pipeline runs: featurize the raw text once (encoded counts), count the
    target, then fit (decode into the histogram) and score (decode and dot).  ``fit``/``score``:
    tokenizing twice, once per stage, as the reference does.
    """
    from dsel import kernel as K

    batches = [pa.array(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    target = pa.array(target_texts)
    table = np.random.default_rng(0).normal(size=(1, 10_000))
    warm = pa.array(texts[:10])
    K.score_batch(warm, table, hash_kind=hash_kind)  # compile / load numba's cache for every entry point
    K.count_batch(warm, np.zeros(10, np.int64), np.zeros((1, 10_000), np.int64), hash_kind=hash_kind)
    K.score_features(K.features_batch(warm, 10_000, hash_kind=hash_kind)[0], table)
    rounds: dict[str, list[float]] = {"fit": [], "score": [], "single": []}
    for _ in range(repeats):
        counts = np.zeros((1, 10_000), dtype=np.int64)
        start = time.process_time()
        for batch in batches:
            K.count_batch(batch, np.zeros(len(batch), dtype=np.int64), counts, hash_kind=hash_kind)
        K.count_batch(target, np.zeros(len(target), dtype=np.int64), counts, hash_kind=hash_kind)
        rounds["fit"].append(time.process_time() - start)
        start = time.process_time()
        for batch in batches:
            K.score_batch(batch, table, hash_kind=hash_kind)
        rounds["score"].append(time.process_time() - start)
        start = time.process_time()
        # as the pipeline with its defaults (no ratio quality filter, so no quality statistics)
        encoded = [K.features_batch(batch, 10_000, hash_kind=hash_kind)[0] for batch in batches]
        K.count_batch(target, np.zeros(len(target), dtype=np.int64), counts, hash_kind=hash_kind)
        for feats in encoded:
            K.count_features(feats, np.zeros(len(feats), dtype=np.int64), counts)
        for feats in encoded:
            K.score_features(feats, table)
        rounds["single"].append(time.process_time() - start)
    return {stage: float(np.median(times)) for stage, times in rounds.items()}


def _tree(pid: int) -> list[int]:
    pids, frontier = [pid], [pid]
    while frontier:
        nxt = []
        for p in frontier:
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    with open(f"/proc/{p}/task/{task}/children") as fh:
                        nxt += [int(c) for c in fh.read().split()]
            except OSError:
                pass
        pids += nxt
        frontier = nxt
    return pids


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:13]) / CLK  # utime + stime of this process alone
    except OSError:
        return 0.0


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0


def spark_run(argv: list[str], module: bool = True) -> dict:
    """Run a dsel command (or, ``module=False``, a Python script) in a subprocess; its wall time, the
    CPU time of its whole process tree, the peak RSS of its JVM, and the per-stage seconds it printed
    (``done``: each in order; ``stages``: the last of each name), and the whole commands' seconds that
    ``reselect.py`` printed (``commands``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.time()
    proc = subprocess.Popen([sys.executable, *(["-m", "dsel.cli"] if module else []), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    seen: dict[int, float] = {}
    jvms: set[int] = set()
    peak = {"jvm_rss": 0}

    def poll() -> None:
        while proc.poll() is None:
            for p in _tree(proc.pid):
                seen[p] = max(seen.get(p, 0.0), _cpu(p))
                if p != proc.pid:
                    try:
                        if "java" in open(f"/proc/{p}/comm").read():
                            jvms.add(p)
                            peak["jvm_rss"] = max(peak["jvm_rss"], _rss(p))
                    except OSError:
                        pass
            time.sleep(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    output = proc.communicate()[0]
    watcher.join()
    wall = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"dsel {' '.join(argv)} failed:\n{output[-3000:]}")
    done = [(m.group(1), float(m.group(2))) for m in re.finditer(r"\[dsel\] (\w+) done in ([\d.]+)s", output)]
    commands = [float(m.group(1)) for m in re.finditer(r"\[bench\] command took ([\d.]+)s", output)]
    # each pid's own CPU at its last sighting (Spark reuses its Python workers, so few are missed)
    return {"wall": wall, "cpu": sum(seen.values()), "jvm_cpu": sum(seen[p] for p in jvms), "stages": dict(done),
            "done": done, "commands": commands, "jvm_rss": peak["jvm_rss"]}


def row(name: str, docs: int, mb: float, cpu: float, ref: tuple[int, float, float] | None = None) -> str:
    line = f"| {name:<52} | {docs / cpu:>12,.0f} | {mb / cpu:>9.2f} |"
    if ref:
        line += f" {(mb / cpu) / (ref[1] / ref[2]):>8.1f}x |"
    else:
        line += " " * 10 + " |"
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--ref-mb", type=float, default=16)
    parser.add_argument("--data", default="/tmp/dsel-bench")
    parser.add_argument("--quick", action="store_true", help="only local[2] at 1x (no scaling runs)")
    args = parser.parse_args()
    info = build(Path(args.data) / f"{args.size_mb}mb", args.size_mb)
    work = Path(tempfile.mkdtemp(prefix="dsel-bench-"))
    target_texts = [json.loads(line)["text"] for line in open(info["target"], encoding="utf-8")]

    print(f"machine: {os.cpu_count()} cores; raw corpus {info['text_bytes'] / 1e6:,.0f} MB of text, "
          f"{info['docs']:,} documents (shared corpus x{info['copies']}); target 300 sci_abstracts docs\n")
    ref_raw, texts = subset(info["raw"], args.ref_mb, work / "ref-raw.jsonl")
    ref_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    ref_docs = len(texts)
    print(f"reference subset: first {ref_mb:.1f} MB, {ref_docs:,} documents of the same files")
    ref = reference(ref_raw, info["target"], work, k=min(1000, ref_docs // 10))
    ker = kernel(texts, target_texts, "murmur3")
    sha = kernel(texts, target_texts, "sha256")
    ref_fs = ref["fit"] + ref["score"]

    print("\n### Single core, same subset (CPU seconds of this process)\n")
    print(f"| {'stage':<52} | {'docs/s/core':>12} | {'MB/s/core':>9} | {'x ref':>8} |")
    print(f"|{'-' * 54}|{'-' * 14}|{'-' * 11}|{'-' * 10}|")
    base = (ref_docs, ref_mb, ref_fs)
    for name, cpu in (("data-selection 1.0.3 fit", ref["fit"]), ("data-selection 1.0.3 score", ref["score"]),
                      ("data-selection 1.0.3 fit + score", ref_fs),
                      ("dsel kernel fit (murmur3)", ker["fit"]), ("dsel kernel score (murmur3)", ker["score"]),
                      ("dsel kernel fit + score, tokenizing twice (murmur3)", ker["fit"] + ker["score"]),
                      ("dsel kernel fit + score, one pass (murmur3)", ker["single"]),
                      ("dsel kernel fit + score, one pass (sha256 parity)", sha["single"])):
        print(row(name, ref_docs, ref_mb, cpu, base))
    print(f"\ndata-selection 1.0.3 resample of {min(1000, ref_docs // 10):,} docs: {ref['select']:.2f} CPU s")
    speedup_kernel = ref_fs / ker["single"]
    speedup_sha = ref_fs / sha["single"]

    runs = []
    plans = [(2, 1.0)] if args.quick else [(2, 0.25), (2, 0.5), (2, 1.0), (1, 1.0)]
    for cores, share in plans:
        sub = Path(args.data) / f"{args.size_mb}mb" / "raw"
        files = sorted(sub.glob("*.jsonl"))
        use = files[:max(1, round(len(files) * share))]
        mb = info["text_bytes"] / 1e6 * len(use) / len(files)
        docs = int(info["docs"] * len(use) / len(files))
        out = work / f"out-{cores}-{share}"
        argv = ["run", "--master", f"local[{cores}]", "--target", info["target"], "--out", str(out),
                "--num-samples", "10000", "--seed", "0", "--conf", "spark.ui.showConsoleProgress=false",
                "--conf", f"spark.sql.shuffle.partitions={4 * cores}", "--conf", "spark.driver.memory=4g"]
        for f in use:
            argv += ["--raw", str(f)]
        result = spark_run(argv)
        # two selects in one fresh session: the first pays for the JVM's warm-up, the second does not
        again = spark_run([str(Path(__file__).resolve().parent / "reselect.py"), "--master", f"local[{cores}]",
                           "--target", info["target"], "--out", str(out),
                           *[x for f in use for x in ("--raw", str(f))]], module=False)
        cold, warm = [seconds for name, seconds in again["done"] if name == "select"]
        s = result["stages"]
        score, scoring = max(s.get("score", 0), 1e-9), max(s.get("featurize", 0) + s.get("score", 0), 1e-9)
        runs.append({"cores": cores, "share": share, "mb": mb, "docs": docs, **result, "reselect": cold,
                     "reselect_warm": warm, "reselect_command": again["commands"],
                     "over_score": (cold / score, warm / score),
                     "over_scoring": (cold / scoring, warm / scoring)})
        shutil.rmtree(out, ignore_errors=True)

    print("\n### End to end on Spark (read, fit, score, select, write Delta), CPU of the whole process tree\n")
    print(f"| {'run':<52} | {'docs/s/core':>12} | {'MB/s/core':>9} | {'x ref':>8} |")
    print(f"|{'-' * 54}|{'-' * 14}|{'-' * 11}|{'-' * 10}|")
    for r in runs:
        ref_all = (ref_docs, ref_mb, ref_fs + ref["select"])
        label = f"local[{r['cores']}] {r['share']:g}x ({r['mb']:,.0f} MB), CPU {r['cpu']:.0f}s ({r['jvm_cpu']:.0f}s JVM)"
        print(row(label, r["docs"], r["mb"], r["cpu"], ref_all))
    # dsel splits the reference's scoring (tokenize, hash and weigh every raw document) into featurize
    # (the pass over the text) and score (decoding the stored counts): re-select is compared with both.
    print("\n| run | wall s | featurize s | fit s | score s | select s | re-select s, fresh JVM / warm "
          "| re-select / score, fresh / warm | re-select / (featurize + score), fresh / warm "
          "| whole `dsel select` s, fresh / warm | JVM peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        s = r["stages"]
        print(f"| local[{r['cores']}] {r['share']:g}x | {r['wall']:.0f} | {s.get('featurize', 0):.1f} | {s.get('fit', 0):.1f} | "
              f"{s.get('score', 0):.1f} | {s.get('select', 0):.1f} | {r['reselect']:.1f} / {r['reselect_warm']:.1f} | "
              f"{r['over_score'][0]:.2f} / {r['over_score'][1]:.2f} | "
              f"{r['over_scoring'][0]:.2f} / {r['over_scoring'][1]:.2f} | "
              f"{' / '.join(f'{c:.1f}' for c in r['reselect_command'])} | {r['jvm_rss'] / 2**20:,.0f} MB |")
    full2 = next(r for r in runs if r["cores"] == 2 and r["share"] == 1.0)
    e2e_per_core = full2["mb"] / full2["cpu"]
    ref_per_core = ref_mb / (ref_fs + ref["select"])
    single_core = ref_mb / ker["single"]
    wall_per_core = full2["mb"] / (full2["wall"] * 2)
    efficiency = (full2["mb"] / full2["wall"]) / (2 * single_core)
    one = next((r for r in runs if r["cores"] == 1 and r["share"] == 1.0), None)
    scaling = (one["wall"] / full2["wall"]) if one else float("nan")
    print(f"\nSpark efficiency (achieved MB/s / (2 cores x single-core kernel MB/s)): {efficiency:.2f}; "
          f"local[1] -> local[2] wall speed-up: {scaling:.2f} (parallel efficiency {scaling / 2:.2f}); "
          f"per core by wall x cores: {wall_per_core:.2f} MB/s")
    print(f"speedup_kernel_per_core={speedup_kernel:.1f} speedup_end_to_end_per_core={e2e_per_core / ref_per_core:.1f} "
          f"speedup_sha256_per_core={speedup_sha:.1f} spark_efficiency={efficiency:.2f} "
          f"reselect_over_score={full2['over_score'][0]:.2f} reselect_warm_over_score={full2['over_score'][1]:.2f} "
          f"reselect_over_featurize_score={full2['over_scoring'][0]:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

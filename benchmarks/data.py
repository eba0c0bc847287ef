"""Benchmark data: the shared corpus replicated with distinct ids to a target size, as JSON lines.

    python benchmarks/data.py --size-mb 1024 --out /tmp/dsel-bench
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
from pathlib import Path

CORPUS = Path(os.environ.get("DSEL_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
TARGET_DOMAIN, TARGET_DOCS = "sci_abstracts", 300


def load_corpus() -> tuple[list[dict], list[dict]]:
    """(pool, target): every domain, with 300 sci_abstracts documents held out as the target."""
    pool, target = [], []
    for path in sorted(CORPUS.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            docs = [json.loads(line) for line in fh]
        if path.name.startswith(TARGET_DOMAIN):
            target, docs = docs[:TARGET_DOCS], docs[TARGET_DOCS:]
        pool += docs
    random.Random(0).shuffle(pool)  # every file and every prefix mixes all domains
    return pool, target


def build(out: Path, size_mb: int, files: int = 16) -> dict:
    """Write raw/part-*.jsonl (at least size_mb MB of text) and target.jsonl under ``out``; reuse if present."""
    marker = out / f"ready-{size_mb}-v2.json"
    if marker.exists():
        return json.loads(marker.read_text())
    pool, target = load_corpus()
    (out / "raw").mkdir(parents=True, exist_ok=True)
    handles = [open(out / "raw" / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(files)]
    text_bytes = docs = copy = 0
    while text_bytes < size_mb * 1_000_000:
        for d in pool:
            if text_bytes >= size_mb * 1_000_000:
                break
            line = json.dumps({"id": f"{d['id']}#{copy}", "text": d["text"], "domain": d["domain"]},
                              ensure_ascii=False)
            handles[docs % files].write(line + "\n")
            text_bytes += len(d["text"].encode("utf-8"))
            docs += 1
        copy += 1
    for h in handles:
        h.close()
    with open(out / "target.jsonl", "w", encoding="utf-8") as fh:
        for d in target:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    info = {"raw": str(out / "raw"), "target": str(out / "target.jsonl"), "docs": docs, "text_bytes": text_bytes,
            "copies": copy}
    marker.write_text(json.dumps(info))
    return info


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--out", default="/tmp/dsel-bench")
    args = parser.parse_args()
    print(build(Path(args.out) / f"{args.size_mb}mb", args.size_mb))

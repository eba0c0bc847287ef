"""Rebuild the demo sample in examples/data from the shared corpus (../shared/corpus).

Only domains whose licence allows redistribution are used; see examples/data/SOURCES.md.
The pool mixes 150 documents of each domain; the target is 100 other sci_abstracts documents.

    python examples/make_sample.py [CORPUS_DIR]
"""
from __future__ import annotations

import gzip
import json
import random
import sys
from pathlib import Path

DOMAINS = ["sci_abstracts", "python_peps", "rust_rfcs", "movie_reviews", "email_ham", "shakespeare",
           "tldr_pages", "fiction_moby_dick"]
TARGET = "sci_abstracts"
PER_DOMAIN, TARGET_SIZE, MAX_CHARS = 150, 100, 12_000


def main(corpus: Path, out: Path) -> None:
    rng = random.Random(0)
    pool, target = [], []
    for domain in DOMAINS:
        with gzip.open(corpus / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as fh:
            docs = [d for d in map(json.loads, fh) if len(d["text"]) <= MAX_CHARS]
        rng.shuffle(docs)
        if domain == TARGET:
            target += docs[:TARGET_SIZE]
            docs = docs[TARGET_SIZE:]
        pool += docs[:PER_DOMAIN]
    rng.shuffle(pool)
    out.mkdir(parents=True, exist_ok=True)
    for name, docs in (("raw.jsonl.gz", pool), ("target.jsonl.gz", target)):
        with gzip.open(out / name, "wt", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps({"id": d["id"], "text": d["text"], "domain": d["domain"]}, ensure_ascii=False) + "\n")
    print(f"wrote {len(pool)} raw and {len(target)} target documents to {out}")


if __name__ == "__main__":
    root = Path(__file__).resolve().parent
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else root.parent.parent / "shared" / "corpus", root / "data")

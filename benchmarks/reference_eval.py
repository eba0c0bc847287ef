"""data-selection 1.0.3's precision at k on the pools of tests/test_evaluate.py (for the README table).

    python benchmarks/reference_eval.py

Same pool construction (tests.conftest.held_out_pool with the test's domains and sizes) and the
same k (the target domain's pool documents of at least 100 words); num_proc=1, np.random.seed(0).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from data_selection import HashedNgramDSIR
from nltk.tokenize import WordPunctTokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.conftest import held_out_pool  # noqa: E402
from tests.test_evaluate import PER_DOMAIN, POOL_DOMAINS, TARGET_DOCS, TARGETS  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="dsel-refeval-"))
    raw, docs, targets = held_out_pool(root, POOL_DOMAINS, TARGETS, PER_DOMAIN, TARGET_DOCS)
    tokenize = WordPunctTokenizer().tokenize
    for domain, target in targets.items():
        k = sum(1 for d in docs if d["domain"] == domain and len(tokenize(d["text"].lower())) >= 100)
        dsir = HashedNgramDSIR([raw], [target], cache_dir=str(root / domain / "cache"), num_proc=1)
        dsir.fit_importance_estimator(num_tokens_to_fit="auto")
        dsir.compute_importance_weights()
        precision = {}
        for name, top_k in (("gumbel", False), ("topk", True)):
            np.random.seed(0)
            out = root / domain / name
            dsir.resample(out_dir=str(out), num_to_sample=k, cache_dir=str(root / domain / f"c-{name}"), top_k=top_k)
            picked = [json.loads(line)["domain"] for f in sorted(out.glob("*.jsonl")) for line in f.open()]
            precision[name] = sum(x == domain for x in picked) / k
        print(f"{domain}: k={k} precision@k gumbel={precision['gumbel']:.2f} topk={precision['topk']:.2f}")


if __name__ == "__main__":
    main()

"""sha256 mode reproduces data-selection 1.0.3: probabilities, log ratios and per-document log weights."""
from __future__ import annotations

import numpy as np
import pytest
from data_selection import HashedNgramDSIR

from dsel.config import DselConfig
from dsel.featurize import features
from dsel.fit import fit
from dsel.pipeline import read_raw, read_targets
from dsel.score import score, weights
from tests.conftest import sample_docs, write_jsonl


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    raw = []
    for domain in ("python_peps", "email_spam", "wordnet", "inaugural_speeches", "jargon"):
        raw += sample_docs(domain, 40, seed=2)
    target = sample_docs("sci_abstracts", 60, seed=2)
    raw_path, target_path = write_jsonl(root / "raw.jsonl", raw), write_jsonl(root / "target.jsonl", target)
    dsir = HashedNgramDSIR([raw_path], [target_path], cache_dir=str(root / "cache"), num_proc=1)
    dsir.fit_importance_estimator(num_tokens_to_fit="auto")
    dsir.compute_importance_weights()
    ref_weights = np.load(root / "cache" / "log_importance_weights" / "0.npy")
    ref_lengths = np.load(root / "cache" / "perexample_metadata" / "0.npy")
    return {"raw": raw_path, "target": target_path, "docs": raw, "dsir": dsir,
            "weights": dict(zip((d["id"] for d in raw), ref_weights)),
            "lengths": dict(zip((d["id"] for d in raw), ref_lengths))}


def test_sha256_mode_matches_data_selection(spark, reference):
    cfg = DselConfig.from_mapping({"raw": [reference["raw"]], "target": [reference["target"]],
                                   "hash_kind": "sha256"})
    feats = features(read_raw(spark, cfg), cfg)
    fitted = fit(feats, read_targets(spark, cfg), cfg)
    dsir = reference["dsir"]
    p_raw = fitted.raw_counts / fitted.raw_counts.sum()
    p_target = fitted.target_counts[0] / fitted.target_counts[0].sum()
    np.testing.assert_allclose(p_raw, dsir.raw_probs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p_target, dsir.target_probs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fitted.log_ratios[0], dsir.log_diff, rtol=0, atol=1e-9)

    rows = weights(score(feats, fitted)).collect()
    assert len(rows) == len(reference["docs"])
    for row in rows:
        assert abs(row["log_weight"] - reference["weights"][row["id"]]) <= 1e-9 * max(1.0, abs(row["log_weight"]))
        assert row["num_words"] == reference["lengths"][row["id"]]


def test_murmur3_mode_differs_from_sha256_but_agrees_on_shape(spark, reference):
    cfg = DselConfig.from_mapping({"raw": [reference["raw"]], "target": [reference["target"]]})
    fitted = fit(features(read_raw(spark, cfg), cfg), read_targets(spark, cfg), cfg)
    assert fitted.raw_counts.sum() == reference["dsir"]._fit_bow([reference["raw"]]).sum()
    assert not np.allclose(fitted.log_ratios[0], reference["dsir"].log_diff)

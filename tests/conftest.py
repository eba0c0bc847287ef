"""One session-scoped local Spark with Delta for the whole test run, and shared test data."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pytest

from dsel.session import build_session

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("DSEL_CORPUS", REPO.parent / "shared" / "corpus"))


@pytest.fixture(scope="session")
def spark():
    session = build_session("local[2]", {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "2",
        "spark.driver.memory": "4g",
        # The JVM's tiered compilers (dsel's local default is C1 alone, the cheaper choice for one
        # command): this JVM runs the same Spark and Delta code for the whole suite, where C2 pays.
        # Six small runs in one session on a 2-core machine: the warm ones 12.2-15.7 s with C2,
        # 17.9-19.9 s with C1 alone (the first 41.7 s against 34.6 s).
        "spark.driver.extraJavaOptions": "-XX:ReservedCodeCacheSize=240m -XX:+UseSerialGC",
        # Expressions outside whole-stage code generation are interpreted (Spark's fallback path): each
        # test's input is a few hundred documents, where generating a projection's source in every task
        # costs more than its rows (tests/test_pipeline.py and test_select.py 237.6 -> 178.6 s).  Generated
        # code still runs in whole-stage plans, and dsel's default (compiled) in the tests that start a
        # driver of their own: the standalone cluster's run, compared table for table with this session's,
        # and the CLI processes of test_robustness, compared with runs of this session.
        "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    }, app_name="dsel-tests", write_class_archive=False)  # exiting last, its archive would only serve later runs
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def load_domain(domain: str) -> list[dict]:
    """All documents of one shared-corpus domain."""
    path = CORPUS / f"{domain}.jsonl.gz"
    assert path.exists(), f"the shared corpus is missing {path}; set DSEL_CORPUS to its folder"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def write_jsonl(path: Path, docs: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    return str(path)


def sample_docs(domain: str, count: int, seed: int = 0, max_chars: int = 20_000) -> list[dict]:
    docs = [d for d in load_domain(domain) if len(d["text"]) <= max_chars]
    random.Random(seed).shuffle(docs)
    return docs[:count]


def held_out_pool(root: Path, pool_domains: list[str], targets: list[str], per_domain: int, held: int,
                  seed: int = 4, max_chars: int = 10_000) -> tuple[str, list[dict], dict[str, str]]:
    """A labelled raw pool of ``per_domain`` documents per domain, and for each target domain
    ``held`` other documents of it written as its target file: (raw path, pool docs, {domain: target path})."""
    docs, held_out = [], {}
    for domain in pool_domains:
        sample = sample_docs(domain, per_domain + (held if domain in targets else 0), seed=seed, max_chars=max_chars)
        if domain in targets:
            held_out[domain], sample = sample[:held], sample[held:]
        docs += sample
    return (write_jsonl(root / "raw.jsonl", docs), docs,
            {d: write_jsonl(root / f"target-{d}.jsonl", t) for d, t in held_out.items()})


def bottom_k(keys: dict[int, dict[str, int]], k: int) -> dict[int, list[str]]:
    """Per bucket, the k n-grams with the smallest (key, UTF-8 bytes): the rule of dsel.kernel.NgramSample."""
    return {b: [g for g, _ in sorted(v.items(), key=lambda item: (item[1], item[0].encode()))[:k]]
            for b, v in keys.items()}


def oracle_sample(docs, hashes, num_buckets: int, k: int, hash_kind: str, n: int = 2) -> dict[int, list[str]]:
    """The n-gram sample of ``docs`` (content hashes ``hashes``) computed from the pure-Python oracles."""
    from dsel import kernel as K

    keys: dict[int, dict[str, int]] = {}
    for doc, doc_hash in zip(docs, hashes):
        for gram, position in K.oracle_ngrams(doc or "", n):
            kept = keys.setdefault(K.oracle_bucket(gram, num_buckets, 0, hash_kind), {})
            key = K.sample_key(gram, int(doc_hash), position)
            kept[gram] = min(key, kept.get(gram, key))
    return bottom_k(keys, k)

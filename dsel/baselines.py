"""Baselines to compare DSIR with, each returning the columns of ``dsel.select.Selection.chosen``.

Every function returns a DataFrame ``id, doc_hash, num_words, log_weight, rank, target,
method_score`` (:data:`COLUMNS`; rank 1 = highest key; ``method_score`` is what the method ranks
by, before any noise: the uniform draw, DSIR's log importance weight, the classifier's probability),
picked among eligible documents only (``num_words >= min_length``, or a :class:`dsel.select.Filters`)
from the weights table of :func:`dsel.score.weights`, so that any two selections can be joined back to
the raw records and compared.  All randomness is a pure function of ``(seed, id)`` through Spark's
``xxhash64``, like :func:`dsel.select.gumbel`: the same seed gives the same documents on any
partitioning.

* :func:`random_selection`: k eligible documents uniformly at random.
* :func:`dsir_selection`: DSIR Gumbel-top-k or top-k (:func:`dsel.select.select`).
* :func:`heuristic_classification`: the GPT-3 quality filter that the DSIR paper compares with.
  A logistic regression (Spark MLlib) on hashed unigram+bigram features is trained to tell target
  documents (label 1) from raw ones (label 0); each raw document's score is its predicted
  probability of being target-like.  GPT-3 keeps a document when ``np.random.pareto(9) > 1 - score``;
  to get exactly k documents, the key ``score + pareto_noise`` is ranked and the top k are kept (a
  document kept at a lower threshold is kept at a higher one, so this is the same rule with the
  threshold set to give k).  ``mode='topk'`` ranks by the score alone.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dsel.config import DselConfig
from dsel.read import HASH, ID, REASON, TEXT
from dsel.select import SELECTED_COLUMNS, Filters, eligible, select

KEY = "_dsel_key"
#: The columns every baseline returns: a selection's columns and the method's own score.
COLUMNS = SELECTED_COLUMNS + ("method_score",)
#: GPT-3's Pareto shape for the classifier filter.
PARETO_ALPHA = 9.0
#: Java-regex version of nltk's WordPunctTokenizer pattern (Unicode classes on).
TOKEN_PATTERN = r"(?U)\w+|[^\w\s]+"


def uniform(seed: int, stream: str, column: str = "id") -> F.Column:
    """Uniform in (0, 1) from xxhash64(seed, stream, id), with the 53-bit mapping of dsel.select.gumbel."""
    parts = [F.lit(seed).cast("long")] + ([F.lit(stream)] if stream else []) + [F.col(column)]
    bits = F.shiftrightunsigned(F.xxhash64(*parts), 11)
    return (bits.cast("double") + F.lit(0.5)) / F.lit(float(2 ** 53))


def _top(keyed: DataFrame, k: int, target: str, score: str) -> DataFrame:
    order = [F.col(KEY).desc(), F.col("id").asc()]
    top = keyed.orderBy(*order).limit(k)
    return (top.withColumn("rank", F.row_number().over(Window.orderBy(*order)))
            .select("id", "doc_hash", "num_words", "log_weight", "rank", F.lit(target).alias("target"),
                    F.col(score).alias("method_score")))


def random_selection(weights: DataFrame, k: int, *, seed: int = 0, min_length: Union[int, Filters] = 100,
                     target: str = "random") -> DataFrame:
    """k eligible documents uniformly at random: the k largest ``xxhash64(seed, id)`` uniforms."""
    pool = eligible(weights, min_length).withColumn(KEY, uniform(seed, ""))
    return _top(pool, k, target, KEY)


def dsir_selection(weights: DataFrame, k: int, *, target_names: Sequence[str] = ("target",),
                   proportions: Optional[Sequence[float]] = None, seed: int = 0, method: str = "gumbel",
                   min_length: Union[int, Filters] = 100) -> DataFrame:
    """DSIR's own selection (``method`` 'gumbel' or 'topk'), as :func:`dsel.select.select` makes it."""
    props = list(proportions) if proportions is not None else [1.0] * len(target_names)
    chosen = select(weights, list(target_names), props, num_samples=k, seed=seed, method=method,
                    min_length=min_length).chosen
    return chosen.select(*SELECTED_COLUMNS, F.col("log_weight").alias("method_score"))


def ngram_features(df_prepared: DataFrame, cfg: DselConfig, num_features: Optional[int] = None) -> DataFrame:
    """``features``: hashed unigram+bigram counts (Spark ML RegexTokenizer + NGram + HashingTF), L2-normalised.

    Adds the column to every usable row of a prepared DataFrame.  The tokens follow nltk's
    WordPunctTokenizer pattern (Java regex, Unicode classes); hashing is HashingTF's MurmurHash3 into
    ``num_features`` (default ``cfg.num_buckets``) slots.  Up to ``cfg.ngrams`` n-grams are used.
    """
    from pyspark.ml.feature import HashingTF, NGram, Normalizer, RegexTokenizer

    usable = df_prepared.where(F.col(REASON).isNull())
    tokens = RegexTokenizer(inputCol=TEXT, outputCol="_dsel_t1", pattern=TOKEN_PATTERN, gaps=False,
                            toLowercase=True, minTokenLength=1).transform(usable)
    grams = ["_dsel_t1"]
    for n in range(2, cfg.ngrams + 1):
        tokens = NGram(n=n, inputCol="_dsel_t1", outputCol=f"_dsel_t{n}").transform(tokens)
        grams.append(f"_dsel_t{n}")
    tokens = tokens.withColumn("_dsel_terms", F.concat(*[F.col(g) for g in grams]))
    tf = HashingTF(inputCol="_dsel_terms", outputCol="_dsel_tf", numFeatures=num_features or cfg.num_buckets)
    normed = Normalizer(inputCol="_dsel_tf", outputCol="features", p=2.0).transform(tf.transform(tokens))
    return normed.drop(*grams, "_dsel_terms", "_dsel_tf")


def train_classifier(raw_prepared: DataFrame, targets_prepared: Sequence[DataFrame], cfg: DselConfig, *,
                     seed: int = 0, max_negatives: int = 200_000, reg_param: float = 1e-3, max_iter: int = 50):
    """Fit a LogisticRegression of target (label 1) vs raw (label 0); returns the Spark ML model.

    Negatives are a uniform sample of at most ``max_negatives`` raw documents (by ``(seed, id)``);
    the classes are weighted to equal total weight, as the target is usually much smaller.  The
    features are L2-normalised and not standardised (``standardization=False``), with a light L2
    penalty: standardising rare hashed features, or a weaker penalty, lets the model memorise the
    raw documents it is trained on (which are also the ones it scores), and every raw score then
    collapses towards 0 where the Pareto noise drowns it.
    """
    from pyspark.ml.classification import LogisticRegression

    raw_usable = raw_prepared.where(F.col(REASON).isNull())
    raw_count = raw_usable.count()
    fraction = min(1.0, max_negatives / max(raw_count, 1))
    negatives = raw_usable.where(uniform(seed, "classifier-negatives", ID) <= F.lit(fraction))
    positives = targets_prepared[0]
    for t in targets_prepared[1:]:
        positives = positives.unionByName(t, allowMissingColumns=True)
    positives = positives.where(F.col(REASON).isNull())
    cols = [ID, HASH, TEXT, REASON]
    data = (negatives.select(*cols).withColumn("label", F.lit(0.0))
            .unionByName(positives.select(*cols).withColumn("label", F.lit(1.0))))
    counts = {int(r["label"]): int(r["count"]) for r in data.groupBy("label").count().collect()}
    n_neg, n_pos = counts.get(0, 0), counts.get(1, 0)
    data = data.withColumn("_dsel_w", F.when(F.col("label") == 1.0, F.lit(n_neg / max(n_pos, 1)))
                           .otherwise(F.lit(1.0)))
    train = ngram_features(data, cfg).select("features", "label", "_dsel_w").cache()
    try:
        model = LogisticRegression(featuresCol="features", labelCol="label", weightCol="_dsel_w",
                                   regParam=reg_param, maxIter=max_iter, standardization=False).fit(train)
    finally:
        train.unpersist()
    return model


def classifier_scores(model, raw_prepared: DataFrame, weights: DataFrame, cfg: DselConfig,
                      min_length: Union[int, Filters] = 100) -> DataFrame:
    """The eligible weights rows with ``score``: the model's probability that the document is target-like."""
    from pyspark.ml.functions import vector_to_array

    featured = ngram_features(raw_prepared.select(ID, HASH, TEXT, REASON), cfg)
    scored = model.transform(featured).select(
        F.col(ID).alias("_dsel_sid"), F.col(HASH).alias("_dsel_shash"),
        vector_to_array(F.col("probability"))[1].alias("score"))
    pool = eligible(weights, min_length)
    joined = pool.join(scored, (pool["id"] == scored["_dsel_sid"]) & (pool["doc_hash"] == scored["_dsel_shash"]))
    return joined.drop("_dsel_sid", "_dsel_shash").dropDuplicates(["id"])


def heuristic_classification(raw_prepared: DataFrame, targets_prepared: Sequence[DataFrame], weights: DataFrame,
                             cfg: DselConfig, k: int, *, seed: int = 0, min_length: Union[int, Filters] = 100,
                             mode: str = "pareto", alpha: float = PARETO_ALPHA, target: str = "classifier",
                             model=None) -> DataFrame:
    """The classifier-filter baseline: k eligible documents by ``score + pareto(alpha) noise`` (or score).

    The Pareto noise is numpy's ``pareto(alpha)`` (a Lomax variable, ``U^(-1/alpha) - 1``) with ``U``
    uniform from ``xxhash64(seed, 'pareto', id)``.  Pass a fitted ``model`` to reuse one.
    """
    if mode not in ("pareto", "topk"):
        raise ValueError(f"mode must be 'pareto' or 'topk', got {mode!r}")
    model = model or train_classifier(raw_prepared, targets_prepared, cfg, seed=seed)
    scored = classifier_scores(model, raw_prepared, weights, cfg, min_length)
    if mode == "pareto":
        noise = F.pow(uniform(seed, "pareto"), F.lit(-1.0 / alpha)) - F.lit(1.0)
        key = F.col("score") + noise
    else:
        key = F.col("score")
    return _top(scored.withColumn(KEY, key), k, target, "score")


__all__ = ["COLUMNS", "PARETO_ALPHA", "uniform", "random_selection", "dsir_selection", "ngram_features", "train_classifier",
           "classifier_scores", "heuristic_classification"]

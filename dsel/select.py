"""Select: the eligibility filters and seeded Gumbel-top-k (or top-k) resampling, with quotas.

Eligible documents have at least ``min_length`` words and pass the optional quality filters of the
DSIR paper (:class:`Filters`; off unless configured), computed from the per-document statistics of
the featurize pass (words are the tokenizer's tokens, as in ``num_words``):

* ``max_length``: at most this many words;
* ``max_repetition_ratio``: ``top_word_count / num_words`` (the most frequent word's share) at most this;
* ``min_informative_ratio``: ``informative_words / num_words`` (words neither stopwords nor punctuation) at least this;
* ``max_numeric_ratio``: ``numeric_words / num_words`` (words made only of digits) at most this.

Sampling k documents without replacement with probability proportional to their importance
weights is done with the Gumbel-top-k trick: take the k largest ``log_weight + G``, where G is
standard Gumbel noise.  The noise of a document is a pure function of (seed, target index,
document id)::

    h = xxhash64(seed, target, id)            # Spark's xxhash64, the same on every executor
    u = ((h >>> 11) + 0.5) / 2**53            # uniform in (0, 1)
    G = -log(-log(u))

so a selection does not depend on partitioning, executor count or task retries.  Ties in the
key are broken by id.  As u >= 2**-54, G >= :data:`GUMBEL_MIN` (about -3.62): when the eligibility
pass has counted k documents whose weight reaches an integer floor f, the k-th largest key reaches
f + GUMBEL_MIN, and the top-k drops every row below that before ordering the rest (see
:func:`_least_key`), testing the weight first (G < :data:`GUMBEL_MAX`, about 37.4, so a row whose
weight is below the bound minus that is dropped before its noise is computed); the chosen rows are
the same.  With several targets the quotas follow the reference: ``int(k * p_t)`` for each
target and the remainder to the last one; each target then takes its top documents
among those not chosen by an earlier target.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from dsel.errors import DselError
from dsel.featurize import LOCATION_COLUMNS, STAT_COLUMNS
from dsel.read import HASH, ID, quoted, user_columns
from dsel.write import driver_rows

KEY = "_dsel_key"
#: Selections up to this size use Spark's top-k directly; larger ones use threshold selection.
SMALL_K = 200_000
#: Rows per key bin when ranking a large selection.
RANK_BIN_ROWS = 200_000
SELECTED_COLUMNS = ("id", "doc_hash", "num_words", "log_weight", "rank", "target")
#: The smallest noise :func:`gumbel` gives (at u = 2**-54): every key is at least its weight plus this.
GUMBEL_MIN = -math.log(54 * math.log(2))
#: Above the largest noise :func:`gumbel` gives (u < 1 is at most 1 - 2**-53, so G < 53 ln 2); at u = 1, G is null.
GUMBEL_MAX = 54 * math.log(2)
#: Taken off a key bound, for the rounding of the key's arithmetic.
KEY_SLACK = 1e-3
#: Prefix of the chosen rows' columns while they travel with their raw records.
CARRIED = "_dsel_c_"
#: Each pooled document's largest weight over the targets: a bound on each target's weight.
TOP = "_dsel_top"


def gumbel(seed: int, target: int) -> F.Column:
    """Standard Gumbel noise from (seed, target, id), as in the module docstring."""
    return _noise(F.shiftrightunsigned(F.xxhash64(F.lit(seed).cast("long"), F.lit(target).cast("int"), F.col("id")), 11))


def _noise(bits: F.Column) -> F.Column:
    """G from 53 random bits: at least :data:`GUMBEL_MIN`, below :data:`GUMBEL_MAX`; null for the
    largest value of the bits, where u rounds to 1 (the key is then null, and ordered last)."""
    uniform = (bits.cast("double") + F.lit(0.5)) / F.lit(float(2 ** 53))
    return -F.log(-F.log(uniform))


@dataclass(frozen=True)
class Filters:
    """Which documents of the weights table may be selected (see the module docstring); None is off."""

    min_length: int = 100
    max_length: Optional[int] = None
    max_repetition_ratio: Optional[float] = None
    min_informative_ratio: Optional[float] = None
    max_numeric_ratio: Optional[float] = None

    @classmethod
    def of(cls, rule: Union[int, "Filters", Any]) -> "Filters":
        """A Filters from a minimum length, a Filters, or anything with the same attributes (a DselConfig)."""
        if isinstance(rule, Filters):
            return rule
        if isinstance(rule, int):
            return cls(min_length=rule)
        return cls(**{f.name: getattr(rule, f.name) for f in dataclasses.fields(cls)})

    def failing(self) -> list[tuple[str, F.Column]]:
        """(filter name, condition true for a document that fails it), for every active filter, in order."""
        words = F.greatest(F.col("num_words"), F.lit(1)).cast("double")
        share = lambda column: F.col(column).cast("double") / words  # noqa: E731
        rules = [("min_length", F.col("num_words") < F.lit(self.min_length))]
        if self.max_length is not None:
            rules.append(("max_length", F.col("num_words") > F.lit(self.max_length)))
        if self.max_repetition_ratio is not None:
            rules.append(("max_repetition_ratio", share("top_word_count") > F.lit(float(self.max_repetition_ratio))))
        if self.min_informative_ratio is not None:
            rules.append(("min_informative_ratio",
                          share("informative_words") < F.lit(float(self.min_informative_ratio))))
        if self.max_numeric_ratio is not None:
            rules.append(("max_numeric_ratio", share("numeric_words") > F.lit(float(self.max_numeric_ratio))))
        return rules

    def describe(self) -> str:
        """The active filters in words, for messages."""
        parts = [f"at least {self.min_length} words"]
        parts += [f"{name} {getattr(self, name)}" for name, _ in self.failing()[1:]]
        return ", ".join(parts)

    def _ratio_filters(self) -> list[str]:
        return [name for name, _ in self.failing() if name not in ("min_length", "max_length")]

    def check(self, weights: DataFrame, scan: bool = True) -> None:
        """Fail clearly when a ratio filter is on but the weights have no quality statistics: the table
        predates them, or its documents were featurized with no ratio filter set (they are counted only then).
        ``scan=False`` checks only the columns (:func:`filter_counts` counts the null statistics in its own pass)."""
        quality = self._ratio_filters()
        if not quality:
            return
        missing = [c for c in STAT_COLUMNS if c not in weights.columns]
        if missing or (scan and weights.where(F.col(STAT_COLUMNS[0]).isNull()).limit(1).count()):
            raise self._no_statistics(missing)

    def _no_statistics(self, missing: Sequence[str]) -> DselError:
        return DselError(f"the weights table has no quality statistics ({', '.join(missing or STAT_COLUMNS)}), "
                         f"which {', '.join(self._ratio_filters())} needs: they are counted only when a ratio filter "
                         "is set. Run 'dsel run' (or 'dsel score') with the same --out and this filter: it featurizes "
                         "the raw input again with them, and later runs keep them")


def eligible(weights: DataFrame, min_length: Union[int, Filters], check: bool = True) -> DataFrame:
    """Documents that may be selected: ``num_words >= min_length`` (as the reference), and with a
    :class:`Filters` also its quality filters.  ``check=False``: the caller has checked the statistics."""
    rule = Filters.of(min_length)
    if check:
        rule.check(weights)
    failed = [condition for _, condition in rule.failing()]
    return weights.where(~functools.reduce(lambda a, b: a | b, failed))


class Counts(NamedTuple):
    """What :func:`filter_counts` counts in one pass over a weights table."""

    eligible: int
    removed: dict[str, int]  # documents each filter removed, under the first filter they fail
    mean_words: float  # of the eligible documents
    #: per target, ``[floor, n]`` pairs, floors descending: n eligible documents have ``log_weights[t] >= floor``
    #: (a pair where n first reaches each power of two, up to :data:`SMALL_K`); see :func:`_least_key`.
    top_weights: list

    def record(self) -> dict[str, Any]:
        """As a selection's commit keeps them (JSON-ready), for the next selection (:meth:`recorded`)."""
        return {"eligible": self.eligible, "filtered": dict(self.removed), "mean_words": self.mean_words,
                "top_weights": self.top_weights}

    @classmethod
    def recorded(cls, known: dict[str, Any]) -> Optional["Counts"]:
        """The counts :meth:`record` kept, or None when ``known`` lacks any of them (an older dsel's commit)."""
        if any(key not in known for key in ("eligible", "filtered", "mean_words", "top_weights")):
            return None
        return cls(int(known["eligible"]), {k: int(v) for k, v in known["filtered"].items()},
                   float(known["mean_words"]), known["top_weights"])


def filter_counts(weights: DataFrame, min_length: Union[int, Filters]) -> Counts:
    """The eligible documents, the documents each filter removed, the eligible documents' mean words, and
    how many eligible documents reach each integer floor of each target's weight, in one pass.

    Each removed document is counted under the first filter it fails, in the order of
    :meth:`Filters.failing` (min_length first), so the counts add up to the ineligible documents.
    """
    rule = Filters.of(min_length)
    rule.check(weights, scan=False)
    reason = F.lit(None).cast("string")
    for name, condition in reversed(rule.failing()):
        reason = F.when(condition, F.lit(name)).otherwise(reason)
    nulls = F.col(STAT_COLUMNS[0]).isNull() if rule._ratio_filters() else F.lit(False)
    # One row per (failed filter, eligible document's target and weight floor): a few thousand groups.
    rows = (weights.select(reason.alias("_r"), nulls.alias("_z"), "num_words",
                           F.posexplode_outer(F.when(reason.isNull(), F.col("log_weights"))).alias("_t", "_w"))
            .groupBy("_r", "_z", "_t", F.floor("_w").alias("_b"))
            .agg(F.count("*").alias("_n"), F.sum("num_words").alias("_words")).collect())
    removed = {name: 0 for name, _ in rule.failing()}
    eligible = words = 0
    floors: dict[int, dict[int, int]] = {}  # target -> weight floor -> eligible documents
    for r in rows:
        if r["_z"]:
            raise rule._no_statistics([])
        if r["_r"] is not None:
            removed[r["_r"]] += r["_n"]
            continue
        if (r["_t"] or 0) == 0:  # each eligible document once
            eligible, words = eligible + r["_n"], words + (r["_words"] or 0)
        if r["_t"] is not None and r["_b"] is not None:
            floors.setdefault(r["_t"], {})[int(r["_b"])] = int(r["_n"])
    return Counts(int(eligible), removed, words / eligible if eligible else 0.0,
                  [_powers(floors.get(t, {})) for t in range(max(floors, default=-1) + 1)])


def _powers(counts: dict[int, int]) -> list[list[int]]:
    """``[floor, documents at or above it]``, floors descending, where the running count first reaches
    each power of two, until it reaches :data:`SMALL_K`."""
    pairs, running, reach = [], 0, 1
    for floor in sorted(counts, reverse=True):
        running += counts[floor]
        if running >= reach:
            pairs.append([floor, running])
            while reach <= running:
                reach *= 2
        if running >= SMALL_K:
            break
    return pairs


def _least_key(top_weights: list, target: int, method: str, taken: int, k: int) -> Optional[float]:
    """A key that at least ``k`` documents of target ``target``'s pool reach (the eligible ones but the
    ``taken`` that earlier targets took), or None when the counts do not say: an integer floor that
    ``k + taken`` eligible documents' weights reach, plus the smallest noise.  The pool's k-th largest
    key is then at least this, so no document below it can be among its top k."""
    for floor, n in (top_weights[target] if target < len(top_weights) else []):
        if n >= k + taken:
            return floor + (GUMBEL_MIN if method == "gumbel" else 0.0) - KEY_SLACK
    return None


def quotas(total: int, proportions: Sequence[float]) -> list[int]:
    """Split ``total`` by proportions like data-selection: floor each, the remainder to the last."""
    if not math.isfinite(sum(proportions)):  # finite values whose sum overflows (1e308 twice): scaled first
        proportions = [p / max(proportions) for p in proportions]
    norm = [p / sum(proportions) for p in proportions]
    parts = [int(total * p) for p in norm]
    parts[-1] += total - sum(parts)
    return parts


@dataclass
class Selection:
    """The chosen documents (id, doc_hash, num_words, log_weight, rank, target, and where their lines
    are when the weights table says: source_file, line_start, line_length) and what happened."""

    chosen: DataFrame
    requested: list[int]
    counts: Counts  # of the eligibility pass (or the ones given to :func:`select`)
    warnings: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> int:
        return self.counts.eligible

    @property
    def filtered(self) -> dict[str, int]:
        """Documents each eligibility filter removed."""
        return self.counts.removed


def with_raw_columns(raw: DataFrame, chosen: DataFrame, run_id: str, extra: Sequence[str] = (),
                     per: Sequence[str] = (), broadcast: bool = False) -> DataFrame:
    """The chosen rows joined back to their raw records: every raw column, then ``num_words``,
    ``log_weight``, ``rank``, ``target``, ``run_id`` and the ``extra`` chosen columns.

    ``raw`` comes from :func:`dsel.read.prepare` (or is built from ``chosen`` itself, see
    :func:`dsel.jsonread.raw_rows`, hence the renamed columns); ``chosen`` has ``id`` and
    ``doc_hash``.  When several raw records share one id and text, one is kept per id (and per
    ``per`` columns), the same one on every run.  ``broadcast`` ships ``chosen`` to every task.
    """
    columns = user_columns(raw)
    names = list(dict.fromkeys([*SELECTED_COLUMNS, *extra, *per]))
    picked = chosen.select(*[F.col(quoted(n)).alias(f"{CARRIED}{n}") for n in names])
    picked = F.broadcast(picked) if broadcast else picked
    joined = raw.join(picked, (raw[ID] == F.col(f"{CARRIED}id")) & (raw[HASH] == F.col(f"{CARRIED}doc_hash")))
    once = Window.partitionBy(*[F.col(f"{CARRIED}{c}") for c in per], F.col(f"{CARRIED}id")).orderBy(
        F.to_json(F.struct(*[raw[quoted(c)] for c in columns])))
    kept = joined.withColumn("_dsel_once", F.row_number().over(once)).where(F.col("_dsel_once") == 1)
    return _selected_columns(kept, [raw[quoted(c)] for c in columns], run_id, extra)


def carried_rows(raw: DataFrame, run_id: str) -> DataFrame:
    """:func:`with_raw_columns` for raw records that are the chosen rows one for one and carry their
    columns (named ``CARRIED + name``; :func:`dsel.jsonread.raw_rows` reads them so when the weights
    say where each chosen line is): nothing to join, no duplicates to settle."""
    columns = [c for c in user_columns(raw) if not c.startswith(CARRIED)]
    return _selected_columns(raw, [raw[quoted(c)] for c in columns], run_id, ())


def _selected_columns(rows: DataFrame, raw_columns: list, run_id: str, extra: Sequence[str]) -> DataFrame:
    return rows.select(*raw_columns,
                       *[F.col(f"{CARRIED}{c}").alias(c) for c in ("num_words", "log_weight", "rank", "target")],
                       F.lit(run_id).alias("run_id"), *[F.col(f"{CARRIED}{c}").alias(c) for c in extra])


def _keyed(pool: DataFrame, target: int, seed: int, method: str) -> DataFrame:
    weight = F.col("log_weights")[target]
    key = weight + gumbel(seed, target) if method == "gumbel" else weight
    return pool.withColumn("log_weight", weight).withColumn(KEY, key)


def _order() -> list[F.Column]:
    return [F.col(KEY).desc(), F.col("id").asc()]


def _top(keyed: DataFrame, k: int, pool_size: int,
         least: Optional[Callable[[int], Optional[float]]] = None) -> DataFrame:
    """The k rows with the largest key (ties by id), with ``rank`` 1..k and ``cum_words``.

    Up to :data:`SMALL_K` rows this is Spark's distributed top-k (TakeOrderedAndProject).  For a
    larger k no task ever holds k rows: an approximate quantile of the key gives a threshold
    band, exact counts place the k-th row inside it, and only the band is ordered
    (recursively, when it is itself large).  Ranks then come from key bins (see :func:`_rank`).
    ``least(k)``: a key the k-th largest key is known to reach (see :func:`_least_key`), or None; rows
    below it are dropped before Spark's top-k, which then orders a few rows instead of copying them all.
    """
    if k >= pool_size:
        chosen = keyed
    elif k <= SMALL_K:
        bound = least(k) if least is not None else None
        # The weight tests first: the noise is computed only for rows that they leave (a few).  TOP is
        # the weights table's own log_weight column, which Parquet filters on: a scorer writes each
        # weights file in descending log_weight (see dsel.pipeline), so the reader skips every page
        # of rows below the bound (by the pages' min/max column index) instead of decoding them.
        candidates = keyed
        if bound is not None:
            least_weight = F.lit(bound - GUMBEL_MAX)
            candidates = keyed.where((F.col(TOP) >= least_weight) & (F.col("log_weight") >= least_weight)
                                     & (F.col(KEY) >= F.lit(bound)))
        chosen = candidates.orderBy(*_order()).limit(k)
    else:
        chosen = _threshold_top(keyed, k, pool_size)
    return _rank(chosen, min(k, pool_size))


def _threshold_top(keyed: DataFrame, k: int, n: int) -> DataFrame:
    share = k / n
    error = min(0.01, max(1e-4, share / 50))
    margin = 3 * error
    while True:
        q_hi, q_lo = min(1.0, 1 - share + margin), max(0.0, 1 - share - margin)
        hi, lo = keyed.approxQuantile(KEY, [q_hi, q_lo], error)
        key = F.col(KEY)
        counts = keyed.agg(F.count(F.when(key > hi, 1)).alias("above"),
                           F.count(F.when((key >= lo) & (key <= hi), 1)).alias("band")).first()
        above, band = int(counts["above"]), int(counts["band"])
        if above <= k <= above + band:
            break
        margin *= 4
    in_band = keyed.where((F.col(KEY) >= lo) & (F.col(KEY) <= hi))
    need = k - above
    band_top = (_threshold_top(in_band, need, band) if SMALL_K < need < band
                else in_band.orderBy(*_order()).limit(need))
    return keyed.where(F.col(KEY) > hi).unionByName(band_top)


def _rank(chosen: DataFrame, k: int) -> DataFrame:
    """Add ``rank`` (1 = largest key) and ``cum_words`` (words of this row and all ranked above it).

    Small selections are ranked by one window.  Larger ones are cut into key bins of about
    :data:`RANK_BIN_ROWS` rows (bin = number of bin bounds below the key, a pure function of the
    key); each bin is ranked by its own window and offset by the rows and words of the bins above.
    """
    within = Window.partitionBy("_dsel_bin").orderBy(*_order())
    running = within.rowsBetween(Window.unboundedPreceding, 0)
    bins = -(-k // RANK_BIN_ROWS)
    if bins <= 1:
        binned = chosen.withColumn("_dsel_bin", F.lit(0))
        offsets = {0: (0, 0)}
    else:
        bounds = sorted(set(chosen.approxQuantile(KEY, [i / bins for i in range(1, bins)], 1e-3)))
        bin_of = F.size(F.filter(F.array(*[F.lit(float(b)) for b in bounds]), lambda b: b < F.col(KEY)))
        binned = chosen.withColumn("_dsel_bin", bin_of)
        sizes = sorted(((r["_dsel_bin"], r["n"], r["w"]) for r in binned.groupBy("_dsel_bin").agg(
            F.count("*").alias("n"), F.sum("num_words").alias("w")).collect()), reverse=True)
        offsets, rows, words = {}, 0, 0
        for b, n, w in sizes:
            offsets[b] = (rows, words)
            rows, words = rows + n, words + (w or 0)
    row_offset = F.element_at(F.create_map(*[x for b, (r, _) in offsets.items() for x in (F.lit(b), F.lit(r))]),
                              F.col("_dsel_bin"))
    word_offset = F.element_at(F.create_map(*[x for b, (_, w) in offsets.items() for x in (F.lit(b), F.lit(w))]),
                               F.col("_dsel_bin"))
    return (binned.withColumn("rank", (row_offset + F.row_number().over(within)).cast("long"))
            .withColumn("cum_words", word_offset + F.sum("num_words").over(running))
            .drop("_dsel_bin"))


def _top_tokens(keyed: DataFrame, budget: int, pool_size: int, mean_words: float,
                least: Optional[Callable[[int], Optional[float]]] = None) -> DataFrame:
    """Top documents until their words reach ``budget`` (the last one may cross it)."""
    guess = min(pool_size, int(math.ceil(budget / max(mean_words, 1.0) * 1.25)) + 16)
    while True:
        ranked = _top(keyed, guess, pool_size, least)
        enough = ranked.where(F.col("cum_words") - F.col("num_words") >= budget).limit(1).count() > 0
        if enough or guess >= pool_size:
            return ranked.where(F.col("cum_words") - F.col("num_words") < budget)
        guess = min(pool_size, guess * 2)


def select(weights: DataFrame, target_names: Sequence[str], proportions: Sequence[float], *,
           num_samples: Optional[int] = None, num_tokens: Optional[int] = None, seed: int = 0,
           method: str = "gumbel", min_length: Union[int, Filters] = 100,
           counts: Optional[Counts] = None) -> Selection:
    """Choose documents from the weights table (columns id, doc_hash, num_words, log_weights).

    Give exactly one of ``num_samples`` (exactly that many documents, or all eligible ones with
    a warning when fewer are eligible) and ``num_tokens`` (a budget of words).  ``min_length`` is
    the eligibility rule: a minimum number of words, or a :class:`Filters`.  ``counts``: what
    :func:`filter_counts` returned for this same table and rule (a selection of the same weights
    version recorded them), which saves its pass over the weights.
    """
    if (num_samples is None) == (num_tokens is None):
        raise DselError("give exactly one of --num-samples or --num-tokens")
    if len(proportions) != len(target_names):
        raise DselError(f"{len(proportions)} target proportions for {len(target_names)} targets; "
                        "give one proportion per target")
    rule = Filters.of(min_length)
    if counts is None:
        counts = filter_counts(weights, rule)  # also checks the statistics
    else:
        rule.check(weights, scan=False)
    available, _, mean_words, top_weights = counts
    located = list(LOCATION_COLUMNS) if set(LOCATION_COLUMNS) <= set(weights.columns) else []
    # TOP: the weights table's own log_weight (see _top); computed for a frame without it (Python API)
    top = F.col("log_weight") if "log_weight" in weights.columns else F.array_max("log_weights")
    pool = eligible(weights, rule, check=False).select("id", "doc_hash", "num_words", "log_weights",
                                                       top.alias(TOP), *located)
    result = Selection(chosen=None, requested=[], counts=counts)  # type: ignore[arg-type]
    if num_samples is not None and num_samples > available:
        result.warnings.append(f"asked for {num_samples:,} documents but only {available:,} are eligible "
                               f"({rule.describe()}); selecting all {available:,}")
        num_samples = available
    if num_tokens is not None and num_tokens > mean_words * available:
        result.warnings.append(f"asked for {num_tokens:,} words but the {available:,} eligible documents "
                               f"({rule.describe()}) hold only {round(mean_words * available):,}; selecting all "
                               f"{available:,}")
        # the words there are, split by the quotas as documents are when k is beyond them
        num_tokens = max(1, round(mean_words * available)) if available else 0
    budgets = quotas(num_samples if num_samples is not None else num_tokens, proportions)  # type: ignore[arg-type]
    result.requested = budgets
    parts: list[DataFrame] = []
    taken = 0
    for t, (name, budget) in enumerate(zip(target_names, budgets)):
        remaining = available - taken
        if budget <= 0 or remaining <= 0:
            continue
        keyed = _keyed(pool, t, seed, method)
        least = functools.partial(_least_key, top_weights, t, method, taken)
        if num_samples is not None:
            part = _top(keyed, min(budget, remaining), remaining, least)
        else:
            part = _top_tokens(keyed, budget, remaining, mean_words, least)
        part = part.select("id", "doc_hash", "num_words", "log_weight", "rank", F.lit(name).alias("target"), *located)
        parts.append(part)
        if t < len(budgets) - 1:
            part_ids = part.select("id")
            taken += part_ids.count()
            pool = pool.join(part_ids, "id", "left_anti")
    if not parts:
        chosen = driver_rows(weights.sparkSession, [],
                             "id string, doc_hash long, num_words long, log_weight double, rank long, target string")
    else:
        chosen = parts[0]
        for part in parts[1:]:
            chosen = chosen.unionByName(part)
    result.chosen = chosen
    return result

"""The one typed configuration shared by the CLI, the spark-submit jobs and the notebooks.

A :class:`DselConfig` is built from keyword arguments, a dict, or a TOML file whose keys are
the field names below (the CLI flags are the same names with dashes).  Every value is
validated up front, and a bad one raises :class:`~dsel.errors.ConfigError` naming the key
and what it accepts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from dsel.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FORMATS = ("auto", "json", "parquet", "delta", "table")
METHODS = ("gumbel", "topk")
HASH_KINDS = ("murmur3", "sha256")
EXPORT_FORMATS = ("jsonl", "parquet")
REFIT_POLICIES = ("auto", "always", "never")
JSON_READERS = ("auto", "spark")
FEATURES_WRITERS = ("auto", "pyarrow", "spark")
#: The reference's ``num_tokens_to_fit='auto'``: 100,000 n-gram features per bucket.
AUTO_FIT_FEATURES_PER_BUCKET = 100_000
#: The optional quality filters (off when None), in the order the run summary attributes removals.
QUALITY_FILTERS = ("max_length", "max_repetition_ratio", "min_informative_ratio", "max_numeric_ratio")


@dataclass
class DselConfig:
    """Every setting of a dsel run.  Field names are the TOML keys; flags are ``--field-name``."""

    raw: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    out: str = ""
    raw_format: str = "auto"
    target_format: str = "auto"
    text_column: str = "text"
    target_text_column: Optional[list[str]] = None
    id_column: str = "id"
    ngrams: int = 2
    num_buckets: int = 10_000
    hash_kind: str = "murmur3"
    hash_seed: int = 0
    num_tokens_to_fit: Union[str, int] = "auto"
    combine_targets: bool = False
    target_proportions: Optional[list[float]] = None
    min_length: int = 100
    max_length: Optional[int] = None
    max_repetition_ratio: Optional[float] = None
    min_informative_ratio: Optional[float] = None
    max_numeric_ratio: Optional[float] = None
    max_doc_bytes: int = 64 * 1024 * 1024
    num_samples: Optional[int] = None
    num_tokens: Optional[int] = None
    seed: int = 0
    method: str = "gumbel"
    run_id: Optional[str] = None
    export: Optional[str] = None
    export_format: str = "jsonl"
    json_sampling_ratio: float = 1.0
    json_reader: str = "auto"
    features_writer: str = "auto"
    strict: bool = False
    refit: str = "auto"
    refit_growth: float = 0.1
    pin_versions: Optional[dict[str, int]] = None
    lock_timeout_hours: float = 24.0
    break_lock: bool = False

    def __post_init__(self) -> None:
        # a config built directly (the Python API) is checked as one from flags, TOML or a mapping is
        self.validate()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "DselConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"unknown key; allowed keys are: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items()})

    @classmethod
    def from_toml(cls, path: str, overrides: Optional[Mapping[str, Any]] = None) -> "DselConfig":
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("config", f"file not found: {path}; pass an existing TOML file to --config") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML ({exc}); fix the file") from None
        if isinstance(values.get("dsel"), dict) and len(values) > 1:
            outside = sorted(k for k in values if k != "dsel")
            raise ConfigError(outside[0], f"is outside the [dsel] table of {path}, where it would be ignored; put "
                              "every key under [dsel], or leave the table out")
        values = dict(values.get("dsel", values))
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        for one, other in (("num_samples", "num_tokens"), ("num_tokens", "num_samples")):
            if one in overrides:  # the flag wins over the file's other kind of budget too
                values.pop(other, None)
        values.update(overrides)
        return cls.from_mapping(values)

    def for_target(self, index: int) -> "DselConfig":
        """The settings target ``index`` (in ``target``'s order) is read with: its ``target_text_column``
        (the one name given, or the index-th of one per target) as the text column, if given."""
        names = self.target_text_column
        if not names:
            return self
        name = names[index] if len(names) > 1 else names[0]
        return self if name == self.text_column else dataclasses.replace(self, text_column=name)

    def replace(self, **changes: Any) -> "DselConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- derived values
    @property
    def fit_cap(self) -> Optional[int]:
        """Raw n-gram features to count, or None for all of them."""
        if self.num_tokens_to_fit == "all":
            return None
        if self.num_tokens_to_fit == "auto":
            return AUTO_FIT_FEATURES_PER_BUCKET * self.num_buckets
        return int(self.num_tokens_to_fit)

    @property
    def quality_stats(self) -> bool:
        """Whether a ratio quality filter is on, so featurizing must count the per-document word statistics."""
        return any(getattr(self, name) is not None for name in QUALITY_FILTERS if name != "max_length")

    def fit_params(self) -> dict[str, Any]:
        """The parameters a log-ratio table depends on; scoring must use the same ones."""
        return {
            "ngrams": self.ngrams,
            "num_buckets": self.num_buckets,
            "hash_kind": self.hash_kind,
            "hash_seed": self.hash_seed,
        }

    def default_run_id(self, command: str, inputs: Any = None) -> str:
        """A hash of the command, the parameters and ``inputs`` (what the inputs hold now): rerunning the
        same run on the same data gets the same id, and so replaces and resumes rather than duplicates."""
        ignored = ("run_id", "export", "export_format", "break_lock", "lock_timeout_hours", "json_reader",
                   "features_writer")
        params = {k: v for k, v in self.to_dict().items() if k not in ignored
                  and not (k in QUALITY_FILTERS and v is None)}  # unset filters keep earlier run ids
        # one input or output spelt otherwise (/x/dir/, file:/x/dir) is the same run, as for the features key
        params = same_inputs(params)
        if isinstance(params.get("out"), str):
            params["out"] = same_input(params["out"])
        digest = hashlib.sha256(json.dumps([command, params, inputs], sort_keys=True, default=str).encode()).hexdigest()
        return f"{command}-{digest[:16]}"

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every value; raise ConfigError naming the key and the allowed values."""
        for key in ("combine_targets", "strict", "break_lock"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(key, f"must be true or false, got {getattr(self, key)!r}")
        for key in ("out", "export", "run_id"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise ConfigError(key, f"must be a string, got {value!r}")
        for key in ("refit_growth", "lock_timeout_hours", "json_sampling_ratio"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(key, f"must be a number, got {value!r}")
        for key in ("raw", "target"):
            value = getattr(self, key)
            if isinstance(value, str):
                setattr(self, key, [value])
            elif not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(key, "must be a path or table name, or a list of them")
        _choice("raw_format", self.raw_format, FORMATS)
        _choice("target_format", self.target_format, FORMATS)
        _choice("hash_kind", self.hash_kind, HASH_KINDS)
        _choice("method", self.method, METHODS)
        _choice("export_format", self.export_format, EXPORT_FORMATS)
        _choice("refit", self.refit, REFIT_POLICIES)
        if isinstance(self.refit_growth, bool) or not isinstance(self.refit_growth, (int, float)) or self.refit_growth < 0:
            raise ConfigError("refit_growth", f"must be a number >= 0 (0.1 means 10% more raw documents), "
                              f"got {self.refit_growth!r}")
        if isinstance(self.lock_timeout_hours, bool) or not isinstance(self.lock_timeout_hours, (int, float)) \
                or self.lock_timeout_hours <= 0:
            raise ConfigError("lock_timeout_hours", f"must be a number of hours > 0, got {self.lock_timeout_hours!r}")
        if self.pin_versions is not None:
            pins = self.pin_versions
            if not isinstance(pins, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for k, v in pins.items()):
                raise ConfigError("pin_versions", "must map Delta input paths or table names to versions >= 0, "
                                  'e.g. {"/data/raw": 12}')
            # with both kinds of input given (a command that reads both), a pin must name one of them
            inputs = {same_input(i) for i in [*self.raw, *self.target]} if self.raw and self.target else set()
            unknown = [k for k in pins if inputs and same_input(k) not in inputs]
            if unknown:
                raise ConfigError("pin_versions", f"names {unknown[0]}, which is no --raw or --target input "
                                  f"({', '.join([*self.raw, *self.target])}); name the input as it is given")
        _choice("json_reader", self.json_reader, JSON_READERS)
        _choice("features_writer", self.features_writer, FEATURES_WRITERS)
        if isinstance(self.target_text_column, str):
            self.target_text_column = [self.target_text_column]
        names = self.target_text_column or []
        if not isinstance(names, list):
            raise ConfigError("target_text_column", f"must be a column name, or a list of one per target, "
                                                    f"got {names!r}")
        for key, value in [("text_column", self.text_column), ("id_column", self.id_column),
                           *[("target_text_column", name) for name in names]]:
            if not isinstance(value, str) or not value or "`" in value:
                raise ConfigError(key, f"must be a non-empty column name without backticks, got {value!r}")
        if len(names) > 1 and len(names) != len(self.target):
            raise ConfigError("target_text_column", f"names {len(names)} columns for {len(self.target)} target(s); "
                              "give one name for every target, or one per --target, in the same order")
        _int_range("ngrams", self.ngrams, 1, 8)
        _int_range("num_buckets", self.num_buckets, 1, 1 << 26)
        _int_range("hash_seed", self.hash_seed, 0, (1 << 32) - 1)
        _int_range("min_length", self.min_length, 0, None)
        if self.max_length is not None:
            _int_range("max_length", self.max_length, 1, None)
            if self.max_length < self.min_length:
                raise ConfigError("max_length", f"is {self.max_length} but min_length is {self.min_length}, so no "
                                  "document could be selected; give a max_length >= min_length")
        for key in QUALITY_FILTERS[1:]:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0.0 <= value <= 1.0):
                raise ConfigError(key, f"must be a share between 0 and 1 (or unset to turn the filter off), "
                                  f"got {value!r}")
        _int_range("max_doc_bytes", self.max_doc_bytes, 1, (1 << 31) - 1)
        _int_range("seed", self.seed, -(1 << 63), (1 << 63) - 1)
        if self.num_tokens_to_fit not in ("auto", "all"):
            try:
                as_int = int(self.num_tokens_to_fit)
            except (TypeError, ValueError):
                raise ConfigError("num_tokens_to_fit", "must be 'auto', 'all' or a positive integer, "
                                  f"got {self.num_tokens_to_fit!r}") from None
            _int_range("num_tokens_to_fit", as_int, 1, None)
            self.num_tokens_to_fit = as_int
        if self.num_samples is not None:
            _int_range("num_samples", self.num_samples, 1, None)  # 0 selects nothing: 'dsel score' scores only
        if self.num_tokens is not None:
            _int_range("num_tokens", self.num_tokens, 1, None)
        if self.num_samples is not None and self.num_tokens is not None:
            raise ConfigError("num_tokens", "give either num_samples or num_tokens, not both")
        if self.target_proportions is not None:
            props = self.target_proportions
            if (not isinstance(props, list) or not props
                    or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 0
                               for p in props) or not any(p > 0 for p in props)):
                raise ConfigError("target_proportions",
                                  "must be a list of finite non-negative numbers with a positive sum")
            if self.target and not self.combine_targets and len(props) != len(self.target):
                raise ConfigError("target_proportions", f"has {len(props)} values but there are "
                                  f"{len(self.target)} targets; give one proportion per --target")
            if self.combine_targets and len(props) != 1:
                raise ConfigError("target_proportions", f"has {len(props)} values but combine_targets makes one "
                                  "target; give one proportion, or leave combine_targets off")
        if not self.combine_targets:
            twice = sorted({t for t in self.target if self.target.count(t) > 1})
            if twice:
                raise ConfigError("target", f"names {twice[0]} twice, and targets are told apart by their path "
                                  "(OUT/selected's target column); give each target once, or combine_targets to "
                                  "merge them into one")
        if not 0.0 < self.json_sampling_ratio <= 1.0:
            raise ConfigError("json_sampling_ratio", "must be in (0, 1]")
        # numbers are floats however they were written (TOML's 1 is the flags' 1.0): one run id for one run
        for key in ("refit_growth", "lock_timeout_hours", "json_sampling_ratio", *QUALITY_FILTERS[1:]):
            if getattr(self, key) is not None:
                setattr(self, key, float(getattr(self, key)))
        if self.target_proportions is not None:
            self.target_proportions = [float(p) for p in self.target_proportions]
        if self.run_id is not None and (not self.run_id or len(self.run_id) > 128
                                        or not all(c.isalnum() or c in "-_." for c in self.run_id)):
            raise ConfigError("run_id", "must be 1-128 characters of letters, digits, '-', '_' or '.'")

    def require(self, *keys: str) -> None:
        """Fail clearly when a key that the command needs is missing."""
        for key in keys:
            value = getattr(self, key)
            if value in (None, "", []):
                raise ConfigError(key, f"is required; pass --{key.replace('_', '-')} or set '{key}' in the TOML file")


def same_input(path: str) -> str:
    """An input path as ``pin_versions`` matches it: without a trailing '/' or a ``file:`` scheme."""
    for scheme in ("file://", "file:"):
        if path.startswith(scheme):
            path = path[len(scheme):]
            break
    return path.rstrip("/") or "/"


def same_inputs(key: dict) -> dict:
    """``key`` with its ``raw`` and ``target`` path lists in ``same_input``'s one spelling."""
    return {**key, **{name: [same_input(p) for p in key[name]]
                      for name in ("raw", "target") if isinstance(key.get(name), list)}}


def _choice(key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {value!r}")


def _int_range(key: str, value: Any, low: Optional[int], high: Optional[int]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(key, f"must be {bounds}, got {value}")

#: Help text of each key, shown by ``dsel CMD --help``.
FIELD_HELP: dict[str, str] = {
    'raw': 'Raw corpus: JSON-lines files (plain, .gz, .zst or .bz2), Parquet, Delta paths, globs or catalog tables.',
    'target': 'Target samples.  Several values are several targets, each with its own weight and quota.',
    'out': 'Output directory: the Delta tables log_ratios, weights, skipped, selected and runs go under it.',
    'num_tokens_to_fit': "Raw n-gram features counted for the raw histogram: 'auto' (100,000 x num_buckets), 'all' or an int.",
    'combine_targets': "Treat all --target inputs as one target (the reference's default) instead of one per input.",
    'target_proportions': "Quota of each target; default: proportional to each target's n-gram count.",
    'min_length': "Documents with fewer words than this are not eligible (the reference's min_example_length).",
    'max_length': "Quality filter, off by default: documents with more words than this are not eligible "
                  "(the DSIR paper used 500).",
    'max_repetition_ratio': "Quality filter, off by default: documents whose most frequent word is a larger share "
                            "of their words than this are not eligible (the DSIR paper used 0.2).",
    'min_informative_ratio': "Quality filter, off by default: documents whose share of words that are neither "
                             "stopwords nor punctuation is below this are not eligible (the DSIR paper used 0.3).",
    'max_numeric_ratio': "Quality filter, off by default: documents whose share of words made only of digits is "
                         "above this are not eligible (the DSIR paper used 0.2).",
    'max_doc_bytes': 'Documents with more UTF-8 bytes of text are skipped (reason too_large) and counted.',
    'num_tokens': 'Token (word) budget, an alternative to num_samples.',
    'run_id': 'Defaults to a hash of the command, parameters and input state, so rerunning the same run on the same data replaces and resumes, never duplicates.',
    'strict': 'fail the run when any record is skipped (malformed, null, empty, too large, duplicate id)',
    'json_reader': "auto (default): JSON-lines files are read by pyarrow in the Python workers; spark: by Spark's JSON reader.",
    'features_writer': "auto (default): the pyarrow reader's workers write a new OUT/features themselves (Parquet, "
                       "then one conversion to Delta) when the raw input is 2 GiB or more and --out is a local "
                       "directory, and the workers that score it write a new OUT/weights when the features are "
                       "1.5 GiB or more; pyarrow: whatever the size; spark: always through Spark's Delta writer.",
    'json_sampling_ratio': 'Fraction of JSON lines Spark reads to infer the schema of the extra columns.',
    'raw_format': 'format of --raw: auto, json, parquet, delta or table',
    'target_format': 'format of --target: auto, json, parquet, delta or table',
    'text_column': 'column holding the document text (default text); meta.body names a field inside a struct',
    'target_text_column': "the targets' text column, when it is not --text-column's; repeat it to name one per "
                          "--target, in the same order (default: --text-column)",
    'id_column': 'column holding the document id (default id; without it ids are the SHA-256 of the text); '
                 'meta.id names a field inside a struct',
    'ngrams': 'n of the n-grams: 2 means unigrams and bigrams',
    'num_buckets': 'hash buckets (default 10000)',
    'hash_kind': 'murmur3 (default) or sha256 (reproduces data-selection 1.0.3 exactly)',
    'hash_seed': 'MurmurHash3 seed',
    'seed': 'seed of the Gumbel noise',
    'method': 'gumbel (sampling without replacement, default) or topk',
    'num_samples': 'number of documents to select',
    'export': 'also write the selection to this path',
    'export_format': 'jsonl or parquet',
    'refit': "when to fit the histograms again in 'dsel run': auto (no fit yet, other targets or settings, or "
             "the raw documents grew by more than refit_growth since the fit), always, or never",
    'refit_growth': 'with refit=auto, refit when the raw documents grew by more than this fraction (default 0.1)',
    'pin_versions': 'JSON {"Delta path or table": version}: read those inputs as of that version (time travel)',
    'lock_timeout_hours': "a lock on --out older than this is taken over (its run is presumed dead; default 24)",
    'break_lock': 'take the lock on --out even if another run holds it (only when that run is known to be dead)',
}

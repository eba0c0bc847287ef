"""Config validation and CLI parsing (no Spark)."""
from __future__ import annotations

import pytest

from dsel.cli import build_parser, config_from_args, main
from dsel.config import DselConfig
from dsel.errors import ConfigError
from dsel.select import quotas


def parse(*argv: str) -> DselConfig:
    return config_from_args(build_parser().parse_args(list(argv)))


def test_flags_map_to_config_fields():
    cfg = parse("run", "--raw", "a.jsonl", "--raw", "b.jsonl", "--target", "t.jsonl", "--out", "o",
                "--num-samples", "5", "--seed", "7", "--num-tokens-to-fit", "1000", "--method", "topk",
                "--target-proportions", "2")
    assert cfg.raw == ["a.jsonl", "b.jsonl"] and cfg.target == ["t.jsonl"]
    assert (cfg.num_samples, cfg.seed, cfg.num_tokens_to_fit, cfg.method) == (5, 7, 1000, "topk")
    assert cfg.fit_cap == 1000
    assert parse("fit", "--num-tokens-to-fit", "all").fit_cap is None
    assert parse("fit").fit_cap == 100_000 * 10_000
    # --target-text-column: one name for every target (a string in TOML too), or one per --target
    two = parse("run", "--target", "a", "--target", "b", "--target-text-column", "text", "--target-text-column", "body")
    assert two.target_text_column == ["text", "body"] and two.for_target(1).text_column == "body"
    one = DselConfig.from_mapping({"target": ["a", "b"], "target_text_column": "body"})
    assert one.target_text_column == ["body"] and [one.for_target(i).text_column for i in (0, 1)] == ["body"] * 2


def test_toml_takes_the_same_keys_and_flags_win(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('raw = ["r.jsonl"]\ntarget = ["t.jsonl"]\nout = "o"\nnum_samples = 10\nseed = 3\n'
                    'num_buckets = 500\n')
    cfg = parse("run", "--config", str(path), "--seed", "4")
    assert (cfg.raw, cfg.num_samples, cfg.seed, cfg.num_buckets) == (["r.jsonl"], 10, 4, 500)
    # a number written as an integer in TOML is the flag's float: the same run gets the same run id
    numbers = tmp_path / "n.toml"
    numbers.write_text('raw = ["r.jsonl"]\ntarget = ["t.jsonl"]\nout = "o"\nnum_samples = 10\n'
                       'json_sampling_ratio = 1\ntarget_proportions = [1]\nmax_repetition_ratio = 0\n')
    flags = parse("run", "--raw", "r.jsonl", "--target", "t.jsonl", "--out", "o", "--num-samples", "10",
                  "--json-sampling-ratio", "1", "--target-proportions", "1", "--max-repetition-ratio", "0")
    from_toml = parse("run", "--config", str(numbers))
    assert from_toml == flags and from_toml.default_run_id("run", [["x"]]) == flags.default_run_id("run", [["x"]])
    # keys beside a [dsel] table would be ignored: refused, naming the first
    mixed = tmp_path / "m.toml"
    mixed.write_text('num_samples = 10\n[dsel]\nraw = ["r.jsonl"]\n')
    with pytest.raises(ConfigError, match="'num_samples'.*outside the \\[dsel\\] table"):
        DselConfig.from_toml(str(mixed))


def test_targets_must_be_told_apart_and_a_flag_budget_wins_over_the_files(tmp_path):
    with pytest.raises(ConfigError, match="'target': names t.jsonl twice"):
        parse("run", "--target", "t.jsonl", "--target", "t.jsonl")
    assert parse("run", "--target", "t.jsonl", "--target", "t.jsonl", "--combine-targets").target == ["t.jsonl"] * 2
    with pytest.raises(ConfigError, match="'target_proportions': has 2 values but combine_targets makes one"):
        parse("run", "--target", "a", "--target", "b", "--combine-targets", "--target-proportions", "0.5", "0.5")
    path = tmp_path / "budget.toml"
    path.write_text("num_samples = 100\n")
    assert (parse("select", "--config", str(path), "--num-tokens", "5000").num_tokens,
            parse("select", "--config", str(path), "--num-tokens", "5000").num_samples) == (5000, None)
    path.write_text("num_tokens = 100\n")
    assert parse("select", "--config", str(path), "--num-samples", "7").num_samples == 7


def test_a_config_built_directly_is_checked_as_the_flags_are():
    """The Python API builds DselConfig(...) itself: its values are checked and normalized there too."""
    assert DselConfig(raw="r.jsonl", target="t.jsonl").raw == ["r.jsonl"]  # not read a character at a time
    for values, message in (({"num_samples": 0}, "'num_samples': must be >= 1"),
                            ({"num_samples": "150"}, "'num_samples': must be an integer"),
                            ({"method": "top-k"}, "'method': must be one of gumbel, topk")):
        with pytest.raises(ConfigError, match=message):
            DselConfig(raw=["r"], **values)
    with pytest.raises(ConfigError, match="'seed'"):
        DselConfig(raw=["r"]).replace(seed="7")


@pytest.mark.parametrize("values, key", [
    ({"method": "magic"}, "method"),
    ({"num_buckets": 0}, "num_buckets"),
    ({"num_tokens_to_fit": "lots"}, "num_tokens_to_fit"),
    ({"num_samples": 5, "num_tokens": 5}, "num_tokens"),
    ({"num_samples": 0}, "num_samples"),
    ({"hash_kind": "md5"}, "hash_kind"),
    ({"text_column": "a`b"}, "text_column"),
    ({"run_id": "x; DROP TABLE y"}, "run_id"),
    ({"target": ["a", "b"], "target_proportions": [1.0]}, "target_proportions"),
    ({"target": ["a", "b"], "target_proportions": [float("inf"), 1.0]}, "target_proportions"),  # was a traceback
    ({"colour": "red"}, "colour"),
    ({"target": ["a", "b", "c"], "target_text_column": ["x", "y"]}, "target_text_column"),  # one, or one per target
    ({"target": ["a"], "target_text_column": [""]}, "target_text_column"),
    ({"max_length": 50}, "max_length"),  # below min_length 100: nothing could be selected
    ({"max_length": 0}, "max_length"),
    ({"max_repetition_ratio": 1.5}, "max_repetition_ratio"),
    ({"min_informative_ratio": -0.1}, "min_informative_ratio"),
    ({"max_numeric_ratio": "lots"}, "max_numeric_ratio"),
    ({"max_numeric_ratio": True}, "max_numeric_ratio"),
    ({"strict": "false"}, "strict"),  # a string would count as true
    ({"break_lock": "no"}, "break_lock"),
    ({"combine_targets": 1}, "combine_targets"),
    ({"out": 5}, "out"),
    ({"export": ["a"]}, "export"),
    ({"run_id": 7}, "run_id"),
    ({"json_sampling_ratio": "abc"}, "json_sampling_ratio"),
    ({"refit_growth": float("nan")}, "refit_growth"),  # never a refit
    ({"lock_timeout_hours": float("nan")}, "lock_timeout_hours"),  # a dead run's lock never taken over
    ({"raw": ["/d/raw"], "target": ["/d/t"], "pin_versions": {"/d/other": 1}}, "pin_versions"),  # pins nothing
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError) as err:
        DselConfig.from_mapping(values)
    assert err.value.key == key and key in str(err.value)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("raw = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        DselConfig.from_toml(str(bad))
    with pytest.raises(ConfigError, match="file not found"):
        DselConfig.from_toml(str(tmp_path / "none.toml"))


def test_required_keys_are_named():
    with pytest.raises(ConfigError, match="--out"):
        DselConfig().require("out")


def test_quotas_follow_the_reference_rule():
    assert quotas(10, [1, 1, 1]) == [3, 3, 4]
    assert quotas(7, [0.5, 0.5]) == [3, 4]
    assert sum(quotas(1001, [3.0, 5.0, 11.0])) == 1001
    assert quotas(40, [1e308, 1e308]) == [20, 20]  # a sum that overflows: all went to the last target


def test_default_run_id_is_stable_and_depends_on_parameters():
    a = DselConfig.from_mapping({"raw": ["r"], "num_samples": 5})
    assert a.default_run_id("run") == DselConfig.from_mapping({"raw": ["r"], "num_samples": 5}).default_run_id("run")
    assert a.default_run_id("run") != a.replace(seed=1).default_run_id("run")
    # one path spelt otherwise is the same run; another path is not
    plain = DselConfig.from_mapping({"raw": ["/x/dir", "db.docs"], "target": ["/t/a.jsonl"], "out": "/o"})
    respelt = DselConfig.from_mapping({"raw": ["file:/x/dir/", "db.docs"], "target": ["file:///t/a.jsonl"],
                                       "out": "/o/"})
    assert respelt.default_run_id("run", [["/t@3"]]) == plain.default_run_id("run", [["/t@3"]])
    assert plain.replace(out="/o2").default_run_id("run") != plain.default_run_id("run")
    assert plain.replace(raw=["/x/dir2"]).default_run_id("run") != plain.default_run_id("run")


def test_quality_filters_are_off_by_default_and_are_flags():
    cfg = parse("run")
    assert (cfg.min_length, cfg.max_length, cfg.max_repetition_ratio, cfg.min_informative_ratio,
            cfg.max_numeric_ratio) == (100, None, None, None, None)
    cfg = parse("select", "--max-length", "500", "--max-repetition-ratio", "0.2", "--min-informative-ratio", "0.3",
                "--max-numeric-ratio", "0.2")
    assert (cfg.max_length, cfg.max_repetition_ratio, cfg.min_informative_ratio, cfg.max_numeric_ratio) == \
        (500, 0.2, 0.3, 0.2)
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "--max-repetition-ratio" in help_text and "DSIR paper used 0.2" in help_text
    # every flag with a default says it (seed 0 too), once
    flat = " ".join(help_text.split())
    for says in ("seed of the Gumbel noise (default 0)", "(the reference's min_example_length) (default 100)",
                 "jsonl or parquet (default jsonl)", "(default 0.1)", "hash buckets (default 10000)"):
        assert flat.count(says) == 1, says
    # the default run id follows the parameters and the state of the inputs, not the lock settings
    plain = DselConfig.from_mapping({"raw": ["r"]})
    assert plain.default_run_id("run", ["v1"]) == plain.replace(break_lock=True).default_run_id("run", ["v1"])
    assert plain.default_run_id("run", ["v1"]) != plain.replace(max_length=500).default_run_id("run", ["v1"])
    assert plain.default_run_id("run", ["v1"]) != plain.default_run_id("run", ["v2"])


def test_the_delta_jar_cache_is_used_only_while_every_jar_still_exists(tmp_path, monkeypatch):
    from dsel import session

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = session.jar_cache("io.delta:delta-spark_4.2_2.13:4.4.0")
    assert cache.parent == tmp_path / "cache" / "dsel"
    assert cache != session.jar_cache("io.delta:delta-spark_4.2_2.13:4.4.0", "https://mirror.example/maven")
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for jar in jars:
        jar.write_bytes(b"PK")
    listed = ",".join(f"file://{j}" for j in jars)
    session._remember_jars(cache, listed)
    assert session._cached_jars(cache) == listed
    jars[1].unlink()  # a cleaned Ivy cache: resolve again rather than start without Delta
    assert session._cached_jars(cache) is None
    jars[1].write_bytes(b"PK")
    session._remember_jars(cache, f"file://{tmp_path / 'missing.jar'}")  # never records a list it cannot use
    assert session._cached_jars(cache) == listed


def test_a_flags_bad_value_is_told_in_one_line(capsys):
    """argparse's own mistakes as dsel's: one line, exit status 2, not the whole usage before it."""
    for argv, message in [(["run", "--num-samples", "abc"], "argument --num-samples: invalid int value: 'abc'; "
                                                            "see 'dsel run --help'"),
                          (["select", "--pin-versions", "[1]"], "argument --pin-versions: give a JSON object")]:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert stopped.value.code == 2 and len(err) == 1 and err[0].startswith("dsel: error: " + message), err


def test_the_summary_names_only_the_filters_that_removed_documents():
    from dsel.report import Summary

    lines = Summary("select", "r", eligible=240, filtered={"min_length": 0}).format()
    assert "not eligible" not in lines  # it printed "not eligible 0 (min_length=0)"
    lines = Summary("select", "r", eligible=54, filtered={"min_length": 18, "max_length": 0, "numeric": 6}).format()
    assert "(min_length=18, numeric=6)" in lines

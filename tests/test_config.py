from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_repo_config_is_the_packaged_default() -> None:
    assert (ROOT / "config" / "detector.toml").read_bytes() == (
        ROOT / "detector" / "data" / "detector.toml").read_bytes()
    assert load_config(ROOT / "config" / "detector.toml", env=False) == load_config(None, env=False)


def test_every_signal_and_severity_documented_in_default(config) -> None:
    text = (ROOT / "config" / "detector.toml").read_text()
    for key in ("levels", "allowed_lateness_seconds", "warmup_windows", "slow_half_life_windows",
                "resolve_after_clean_windows", "sensitive_tools", "[[severity]]", "[[overrides]]",
                "[sinks.alertmanager]", "[kafka]", "[metrics]"):
        assert key in text, key


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"windows": {"size_seconds": 0}}, "windows.size_seconds: Expected `float` >= 1.0"),
        ({"windows": {"size_seconds": 0.000001}}, "windows.size_seconds: Expected `float` >= 1.0"),
        ({"windows": {"size_seconds": 86401}}, "windows.size_seconds: Expected `float` <= 86400"),
        ({"windows": {"size_seconds": 60, "allowed_lateness_seconds": 601}},
         "windows.allowed_lateness_seconds: 601 is more than 10 windows of 60 s"),
        ({"windows": {"allowed_lateness_seconds": float("inf")}},
         "windows.allowed_lateness_seconds: inf is not a finite number"),
        ({"signals": {"refusal_rate": {"threshold": float("inf")}}},
         "signals.refusal_rate.threshold: inf is not a finite number"),
        ({"signals": {"refusal_rate": {"min_count": float("nan")}}},
         "signals.refusal_rate.min_count: nan is not a finite number"),
        ({"overrides": [{"match": {"app": "a"}, "threshold_factor": float("-inf")}]},
         "overrides[0].threshold_factor: -inf is not a finite number"),
        ({"kafka": {"session_timeout_seconds": float("inf")}},
         "kafka.session_timeout_seconds: inf is not a finite number"),
        ({"windows": {"size": 60}}, "windows.size: unknown key"),
        ({"signals": {"refusal_rate": {"threshold": "high"}}},
         "signals.refusal_rate.threshold: Expected `float`, got `str`"),
        ({"signals": {"refusal_rate": {"direction": "sideways"}}},
         "signals.refusal_rate.direction: Invalid enum value 'sideways'"),
        ({"signals": {"refusl_rate": {}}}, "signals.refusl_rate: unknown signal"),
        ({"severity": [{"severity": "sev5"}]}, "severity[0].severity: Invalid enum value 'sev5'"),
        ({"severity": [{"severity": "sev2", "signals": ["nope"]}]},
         "severity[0].signals: unknown signal 'nope'"),
        ({"severity": []}, "severity: at least one rule"),
        ({"cohorts": {"levels": [["tenant", "app"], ["app"]]}}, "cohorts.levels[1]: must contain"),
        ({"cohorts": {"levels": [["tenant", "colour"]]}}, "cohorts.levels[0][1]: Invalid enum"),
        ({"overrides": [{"match": {"colour": "red"}}]}, "overrides[0].match.colour: not a cohort"),
        ({"kafka": {"partitions": 0}}, "kafka.partitions: Expected `int` >= 1"),
        ({"input": {"evaluators": ["Faithfulness"]}},
         "input.evaluators[0]: Expected `str` matching regex"),
        ({"input": {"evaluators": [f"e{i}" for i in range(17)]}},
         "input.evaluators: Expected `array` of length <= 16"),
        ({"spend": {"prices": {"gpt-4o": {"input_per_million": -1}}}},
         'spend.prices."gpt-4o".input_per_million: Expected `float` >= 0.0'),
        ({"spend": {"default": {"output_per_million": float("inf")}}},
         "spend.default.output_per_million: inf is not a finite number"),
        ({"spend": {"prices": {"m": {"input": 1}}}}, 'spend.prices."m".input: unknown key'),
        ({"signals": {"eval_faithfulness": {}}}, "signals.eval_faithfulness: unknown signal"),
    ],
)
def test_bad_config_names_key_and_problem(doc: dict, message: str) -> None:
    base = {"severity": [{"severity": "sev4"}]}
    with pytest.raises(ConfigError) as e:
        parse_config(base | doc)
    assert str(e.value).startswith(message), str(e.value)


def test_environment_overrides_kafka(monkeypatch) -> None:
    monkeypatch.setenv("DETECTOR_KAFKA_BROKERS", "127.0.0.1:19092")
    monkeypatch.setenv("DETECTOR_KAFKA_PARTITIONS", "8")
    monkeypatch.setenv("DETECTOR_KAFKA_IDLE_PARTITION_TIMEOUT_SECONDS", "2.5")
    cfg = load_config(None)
    assert cfg.kafka.brokers == "127.0.0.1:19092" and cfg.kafka.partitions == 8
    assert cfg.kafka.idle_partition_timeout_seconds == 2.5
    monkeypatch.setenv("DETECTOR_ALERTMANAGER_URLS", "http://127.0.0.1:9093, http://127.0.0.1:9094")
    assert load_config(None).sinks.alertmanager.urls == ["http://127.0.0.1:9093",
                                                          "http://127.0.0.1:9094"]
    monkeypatch.setenv("DETECTOR_KAFKA_PARTITIONS", "many")
    with pytest.raises(ConfigError, match=r"kafka\.partitions: DETECTOR_KAFKA_PARTITIONS"):
        load_config(None)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[windows\nsize_seconds = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_empty_file_says_it_is_empty(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n\n"):
        empty = tmp_path / "empty.toml"
        empty.write_text(text)
        with pytest.raises(ConfigError, match=r"empty\.toml: the file is empty"):
            load_config(empty, env=False)


@pytest.mark.parametrize(("old", "new", "message"), [
    ("\nthreshold = 5.0", "\nthreshold = inf", "threshold: inf is not a finite number"),
    ("size_seconds = 60", "size_seconds = 0.000001", "windows.size_seconds: Expected `float` >= 1"),
])
def test_check_config_rejects_what_makes_replay_useless(tmp_path: Path, old: str, new: str,
                                                        message: str) -> None:
    text = (ROOT / "config" / "detector.toml").read_text()
    assert old in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace(old, new, 1))
    err = subprocess.run([sys.executable, "-m", "detector.cli", "check-config", str(bad)],
                         capture_output=True, text=True, check=False, timeout=60)
    assert err.returncode == 2 and message in err.stderr, err.stderr
    assert "Traceback" not in err.stderr


def test_check_config_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((ROOT / "config" / "detector.toml").read_text().replace(
        "allowed_lateness_seconds = 30", "allowed_lateness_seconds = -5"))
    run = [sys.executable, "-m", "detector.cli", "check-config"]
    ok = subprocess.run([*run, str(ROOT / "config" / "detector.toml")], capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0 and "ok" in ok.stdout
    err = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert err.returncode == 2
    assert "windows.allowed_lateness_seconds: Expected `float` >= 0.0" in err.stderr
    assert "Traceback" not in err.stderr


def test_evaluation_signals_look_down_and_cost_is_a_signal() -> None:
    base = {"severity": [{"severity": "sev4", "signals": ["cost", "eval_*"]}],
            "input": {"evaluators": ["faithfulness", "relevance"]},
            "signals": {"eval_relevance": {"threshold": 4.0},
                        "eval_faithfulness": {"direction": "both"}}}
    cfg = parse_config(base)
    assert cfg.signal("eval_relevance").direction == "down"      # listed without one
    assert cfg.signal("eval_relevance").threshold == 4.0
    assert cfg.signal("eval_faithfulness").direction == "both"   # as set
    assert cfg.signal("eval_other").direction == "down"          # not listed
    assert cfg.signal("cost").direction == "up"


def test_default_config_records_spend_and_pages_on_a_sustained_eval_drop(config) -> None:
    from detector.core.severity import classify

    assert config.input.evaluators == [] and config.spend.prices == {}
    # cost: sev4 however long and confirmed; an eval drop: sev2 in production once sustained
    assert classify(config.severity, "cost", "production", 30, 20.0, confirmed=True) == "sev4"
    assert classify(config.severity, "eval_faithfulness", "production", 3, -6.0) == "sev2"
    assert classify(config.severity, "eval_faithfulness", "production", 1, -6.0,
                    confirmed=True) == "sev2"
    assert classify(config.severity, "eval_faithfulness", "production", 1, -6.0) == "sev4"

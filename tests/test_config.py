import dataclasses
from pathlib import Path

import pytest

from common.config import Config, ConfigError, load_config, to_dict
from jobs import cli


def test_defaults_are_typed_and_frozen():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.lake == "./lake"
    assert cfg.spark.master == "local[2]"
    assert cfg.split.seed == 42 and cfg.split.ratio == 0.75
    assert cfg.confidence.weights["purchase"] == 8.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lake = "x"  # frozen
    with pytest.raises(TypeError):
        cfg.confidence.weights["view"] = 3.0  # read-only mapping


def test_yaml_and_overrides_merge(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("lake: /data/lake\nconfidence:\n  f: linear\n  weights: {view: 0.5, purchase: 10}\n")
    cfg = load_config(p, overrides=["confidence.half_life_days=7", "split.protocol=temporal"],
                      values={"spark.master": "local[1]"})
    assert cfg.lake == "/data/lake"
    assert cfg.confidence.f == "linear"
    assert dict(cfg.confidence.weights) == {"view": 0.5, "purchase": 10.0}
    assert cfg.confidence.half_life_days == 7.0
    assert cfg.split.protocol == "temporal"
    assert cfg.spark.master == "local[1]"
    assert cfg.sequences.max_len == 50  # untouched sections keep defaults
    assert to_dict(cfg)["confidence"]["weights"]["purchase"] == 10.0


@pytest.mark.parametrize(
    "text, key",
    [
        ("lakee: x\n", "lakee"),
        ("confidence:\n  wieghts: {}\n", "confidence.wieghts"),
        ("ingest:\n  generic:\n    delimitr: ';'\n", "ingest.generic.delimitr"),
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path: Path, text, key):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(p)


@pytest.mark.parametrize(
    "override, match",
    [
        ("split.seed=abc", "split.seed"),
        ("confidence.f=cubic", "confidence.f"),
        ("split.protocol=random", "split.protocol"),
        ("ingest.behavior_map.like=thumbs_up", "ingest.behavior_map.like"),
        ("confidence.weights.teleport=1", "teleport"),
        ("nosection.key=1", "nosection"),
    ],
)
def test_bad_values_are_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_extras_extend_vocabulary():
    cfg = load_config(overrides=["behaviors.extras=[play, share]", "confidence.weights.play=2"])
    assert cfg.vocabulary[-2:] == ("play", "share")
    assert cfg.confidence.weights == {"play": 2.0}


def test_cli_flags_are_config_overrides():
    module, ns = cli.parse(["--lake", "/x", "--set", "split.seed=7", "split", "--protocol",
                            "leave_last_out", "--ratio", "0.8"])
    cfg = cli.config_from_namespace(ns)
    assert module.__name__ == "jobs.split"
    assert (cfg.lake, cfg.split.seed, cfg.split.protocol, cfg.split.ratio) == (
        "/x", 7, "leave_last_out", 0.8)


def test_cli_reports_config_errors(capsys):
    assert cli.main(["--set", "split.bogus=1", "split"]) == 2
    assert "split.bogus" in capsys.readouterr().err


def test_default_yaml_lists_every_option_with_its_default():
    from pathlib import Path

    import yaml

    from common.config import to_dict

    path = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert load_config(path) == load_config()
    assert yaml.safe_load(path.read_text()).keys() == to_dict(load_config()).keys()

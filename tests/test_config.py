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
    # one entry set: the default weights stay and the new one is added
    assert dict(cfg.confidence.weights) == {**to_dict(load_config())["confidence"]["weights"],
                                            "play": 2.0}


def test_set_of_one_nested_key_merges_into_the_default_mapping():
    cfg = load_config(overrides=["confidence.weights.view=2", "ingest.generic.columns.value=v"])
    defaults = load_config()
    assert dict(cfg.confidence.weights) == {**defaults.confidence.weights, "view": 2.0}
    assert dict(cfg.ingest.generic.columns) == {**defaults.ingest.generic.columns, "value": "v"}
    # a conf entry whose name has dots is one entry, not nested sections
    cfg = load_config(overrides=["spark.conf.spark.sql.ansi.enabled=true"])
    assert dict(cfg.spark.conf) == {"spark.sql.ansi.enabled": "True"}


def test_set_of_one_nested_key_merges_into_the_files_mapping(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("confidence:\n  weights: {view: 0.5, purchase: 10}\n")
    cfg = load_config(p, overrides=["confidence.weights.cart=3"])
    assert dict(cfg.confidence.weights) == {"view": 0.5, "purchase": 10.0, "cart": 3.0}
    # a whole mapping given on the command line still replaces it
    cfg = load_config(p, overrides=["confidence.weights={fav: 1}"])
    assert dict(cfg.confidence.weights) == {"fav": 1.0}


def test_set_key_to_empty_is_none_or_a_clear_error():
    cfg = load_config(overrides=["spark.master=", "ingest.batch_id="])
    assert cfg.spark.master is None and cfg.ingest.batch_id is None
    for key in ("spark.app_name", "split.seed", "ingest.force", "evaluate.k"):
        with pytest.raises(ConfigError, match=rf"'{key}' needs a value"):
            load_config(overrides=[f"{key}="])
    with pytest.raises(ConfigError, match="'split' must be a mapping"):
        load_config(overrides=["split="])


def test_malformed_yaml_is_one_line_naming_file_line_and_column(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("lake: x\nspark:\n  master: [local\n  ui: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "\n" not in msg and "<unicode string>" not in msg
    assert msg.startswith(f"{p}:4:5: invalid YAML")
    with pytest.raises(ConfigError, match=r"override 'split.seed=\[1,'.*not valid YAML"):
        load_config(overrides=["split.seed=[1,"])


def test_cli_reports_malformed_yaml_in_one_line(tmp_path: Path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("split:\n\tseed: 1\n")
    assert cli.main(["--config", str(p), "split"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{p}:2:1" in err


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


def test_extends_merges_the_base_file_under_this_one(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("split:\n  protocol: temporal\n  seed: 7\ntrain:\n  epochs: 3\n")
    sub = tmp_path / "m"
    sub.mkdir()
    (sub / "ncf.yaml").write_text("extends: ../base.yaml\ntrain:\n  epochs: 9\n")
    cfg = load_config(sub / "ncf.yaml", overrides=["split.seed=8"])
    assert (cfg.split.protocol, cfg.split.seed, cfg.train.epochs) == ("temporal", 8, 9)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "gone.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml.*extended by"):
        load_config(tmp_path / "gone.yaml")


def test_repo_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(f for f in root.rglob("*.yaml") if f.parent.name != "tune")
    assert len(files) >= 3
    for f in files:
        load_config(f)  # every shipped config (and what it extends) is valid


def test_repo_search_spaces_load():
    from common.tuning import load_space

    root = Path(__file__).resolve().parents[1] / "configs" / "tune"
    files = sorted(root.glob("*.yaml"))
    assert {f.stem for f in files} >= {"als", "als-weights", "ncf", "lightgcn", "sasrec"}
    cfg = load_config()
    for f in files:  # every shipped search space parses and its values pass validation
        model = "als" if f.stem.startswith("als") else f.stem
        space = load_space(str(f), model=model, cfg=cfg)
        assert space.params


def test_config_files_are_loaded_with_safe_yaml(tmp_path):
    """A YAML tag that would construct a Python object (and run code) is refused, not run."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f'lake: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_config(str(evil))
    assert not marker.exists()

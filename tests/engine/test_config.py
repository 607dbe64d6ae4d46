"""Strict config loading: unknown keys (file:line + suggestion), types, overrides, round-trip."""

from pathlib import Path

import pytest

from kinetix.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
    parse_override,
    valid_keys,
)
from kinetix.errors import ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    if "model:" not in text and text.strip():  # a config must name its model (appended: lines keep)
        text += "model:\n  name: test_tsm\n"
    p.write_text(text)
    return p


def test_unknown_key_names_file_line_and_suggestion(tmp_path):
    p = _write(tmp_path, "model:\n  name: test_tsm\noptim:\n  lr: 0.1\n  wieght_decay: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"c\.yaml:5: unknown key 'optim\.wieght_decay'.*'optim\.weight_decay'"
    ):
        load_config(p)


def test_unknown_section_and_key_in_wrong_section(tmp_path):
    with pytest.raises(ConfigError, match=r":1: unknown section 'optimizer'. Did you mean 'optim'"):
        load_config(_write(tmp_path, "optimizer:\n  lr: 0.1\n"))
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lr'.*Did you mean 'optim\.lr'"):
        load_config(_write(tmp_path, "train:\n  lr: 0.1\n"))


def test_types_are_checked_with_line(tmp_path):
    with pytest.raises(ConfigError, match=r":2: train\.epochs: expected int, got 'ten'"):
        load_config(_write(tmp_path, "train:\n  epochs: ten\n"))
    with pytest.raises(ConfigError, match="not one of sgd, adamw"):
        load_config(_write(tmp_path, "optim:\n  name: adam\n"))
    # YAML reads 1e-4 as a string: accepted for float keys
    assert load_config(_write(tmp_path, "optim:\n  weight_decay: 1e-4\n")).optim.weight_decay == 1e-4


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: not valid YAML"):
        load_config(_write(tmp_path, "model:\n  name: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_and_type_check():
    cfg = apply_overrides(
        Config(),
        [
            "optim.lr=0.5",
            "train.devices=2",
            "eval.views=[10,3]",
            "model.kwargs.drop_path_rate=0.1",
            "train.gradient_clip_val=null",
            "data.flip=false",
        ],
    )
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.train.devices == 2 and cfg.eval.views == [10, 3] and cfg.data.flip is False
    assert cfg.model.kwargs == {"drop_path_rate": 0.1} and cfg.train.gradient_clip_val is None
    assert parse_override("optim.lr=1e-3") == ("optim.lr", "1e-3")
    for bad, msg in [
        ("optim.lr", "write section.key=value"),
        ("=3", "write section.key=value"),
        ("optim.lr=abc", "expected float"),
        ("train.epochs=1.5", "expected int"),
        ("trian.epochs=3", "Did you mean 'train.epochs'"),
        ("eval.views=[1,", "not valid YAML"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            apply_overrides(Config(), [bad])


def test_round_trip_dict_and_yaml(tmp_path):
    cfg = apply_overrides(Config(), ["optim.lr=0.2", "eval.views=[2,3]", "model.kwargs.dropout=0.3"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    p = _write(tmp_path, config_to_yaml(cfg))
    assert load_config(p) == cfg


def test_every_key_has_a_default_and_is_settable():
    cfg = Config()
    for key in valid_keys():
        if key == "extra":
            continue
        section, _, leaf = key.partition(".")
        value = getattr(getattr(cfg, section), leaf) if leaf else getattr(cfg, section)
        apply_overrides(cfg, [f"{key}={'null' if value is None else config_to_yaml_value(value)}"])


def config_to_yaml_value(v):
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_strictly(path):
    cfg = load_config(path)
    assert cfg.model.name
    from kinetix.models import is_model

    assert cfg.task == "detection" or is_model(cfg.model.name), f"{path.name}: unknown model {cfg.model.name}"

"""Strict loading of flat YAML configs and ``section.key=value`` overrides.

Every key is checked against :mod:`kinetix.config.schema`: an unknown key is a :class:`ConfigError`
naming the file and line with the closest valid key; a value of the wrong type names the expected
type. The resolved config (file + overrides) round-trips through :func:`config_to_dict` /
:func:`config_from_dict` and is stored beside and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from types import NoneType, UnionType

import yaml

from kinetix.errors import ConfigError

from .schema import CHOICES, SECTIONS, Config


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def valid_keys() -> list[str]:
    """Every dotted key a config may set."""
    keys = ["task", "seed", "extra"]
    for section, factory in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(factory())]
    return keys


def _suggest(key: str) -> str:
    leaf = key.rsplit(".", 1)[-1]
    close = [k for k in valid_keys() if k.endswith("." + leaf)][:1]  # a right key in the wrong section
    close = close or difflib.get_close_matches(key, valid_keys(), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else " See configs/*.yaml for the valid keys."


def _type_name(tp) -> str:
    if isinstance(tp, UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is NoneType else getattr(tp, "__name__", str(tp))


def _coerce(value, tp, where: str):
    """``value`` checked against the annotation ``tp`` (ints pass as floats, '1e-4' strings as floats)."""
    options = typing.get_args(tp) if isinstance(tp, UnionType) else (tp,)
    for opt in options:
        if opt is NoneType and value is None:
            return None
        if opt is bool and isinstance(value, bool):
            return value
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if opt is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if opt is str and isinstance(value, str):
            return value
        if opt is list and isinstance(value, (list, tuple)):
            return list(value)
        if opt is dict and isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{where}expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line in the YAML text (for error messages)."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for knode, vnode in root.value:
        lines[knode.value] = knode.start_mark.line + 1
        if isinstance(vnode, yaml.MappingNode):
            for k2, _ in vnode.value:
                lines[f"{knode.value}.{k2.value}"] = k2.start_mark.line + 1
    return lines


def set_key(cfg: Config, key: str, value, where: str = "") -> None:
    """Set dotted ``key`` of ``cfg`` to ``value`` with type checking (``where`` prefixes errors)."""
    parts = key.split(".")
    if key in ("task", "seed", "extra"):
        obj, leaf = cfg, key
    elif len(parts) == 2 and parts[0] in SECTIONS:
        obj, leaf = getattr(cfg, parts[0]), parts[1]
        if leaf not in _hints(type(obj)):
            raise ConfigError(f"{where}unknown key '{key}'.{_suggest(key)}")
    elif len(parts) >= 3 and parts[0] in ("model", "extra") and parts[1] in ("kwargs", "extra"):
        # free-form dicts: model.kwargs.drop_path_rate=0.1
        container = cfg.model.kwargs if parts[0] == "model" else cfg.extra
        container[".".join(parts[2:])] = value
        return
    elif len(parts) >= 2 and parts[0] == "extra":
        cfg.extra[".".join(parts[1:])] = value
        return
    else:
        raise ConfigError(f"{where}unknown key '{key}'.{_suggest(key)}")
    value = _coerce(value, _hints(type(obj))[leaf], f"{where}{key}: ")
    if key in CHOICES and value is not None and value not in CHOICES[key]:
        raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    setattr(obj, leaf, value)


def config_from_dict(data: dict, source: str = "<dict>", lines: dict[str, int] | None = None) -> Config:
    """Build a :class:`Config` from a nested dict, strictly (unknown keys and bad types raise)."""
    lines = lines or {}

    def where(key: str) -> str:
        return f"{source}:{lines[key]}: " if key in lines else f"{source}: "

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    cfg = Config()
    for top, value in data.items():
        if top in SECTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where(top)}section '{top}' must be a mapping of keys, got {value!r}")
            for key, v in value.items():
                set_key(cfg, f"{top}.{key}", v, where(f"{top}.{key}"))
        elif str(top) not in ("task", "seed", "extra"):
            names = [*SECTIONS, "task", "seed", "extra"]
            close = difflib.get_close_matches(str(top), names, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else f" Sections: {', '.join(names)}."
            raise ConfigError(f"{where(str(top))}unknown section '{top}'.{hint}")
        else:
            set_key(cfg, str(top), value, where(str(top)))
    return cfg


def parse_key_value(
    text: str, form: str = "section.key=value", example: str = "--set optim.lr=0.01 or --set eval.views=[10,3]"
) -> tuple[str, object]:
    """``'KEY=VALUE'`` -> ``(KEY, value)`` with the value parsed as YAML (the one KEY=VALUE parser of
    the command line: config overrides and ``kinetix flops --set``). ``form`` and ``example`` go
    in errors."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or " " in key:
        raise ConfigError(f"bad --set {text!r}: write {form}, e.g. {example}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"bad --set {text!r}: the value is not valid YAML ({e})") from e
    return key, value


def parse_override(text: str) -> tuple[str, object]:
    """``'optim.lr=0.01'`` -> ``('optim.lr', 0.01)``; the value is parsed as YAML."""
    return parse_key_value(text)


def apply_overrides(cfg: Config, overrides: typing.Iterable[str]) -> Config:
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value, f"--set {text}: ")
    return cfg


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a YAML config strictly and apply ``--set``-style overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file. See configs/ for examples.")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{loc}: not valid YAML ({getattr(e, 'problem', e)})") from e
    cfg = config_from_dict(data or {}, str(path), _key_lines(text))
    return apply_overrides(cfg, overrides)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def get_key(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj

"""Strict loading of flat YAML configs and ``section.key=value`` overrides.

Every key is checked against :mod:`kinetix.config.schema`: an unknown key is a :class:`ConfigError`
naming the file and line with the closest valid key; a value of the wrong type names the expected
type. The resolved config (file + overrides) round-trips through :func:`config_to_dict` /
:func:`config_from_dict` and is stored beside and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from types import NoneType, UnionType

import yaml

from kinetix.errors import ConfigError

from .schema import CHOICES, LISTS, RANGES, SECTIONS, Config


class _AliasFound(yaml.YAMLError):
    def __init__(self, mark):
        super().__init__("alias")
        self.problem_mark = mark


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases (``*name``): a few lines of anchors and aliases can
    expand to gigabytes ("billion laughs") once the config is copied or saved."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _AliasFound(self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _yaml_load(text: str, source: str):
    """Parse YAML text strictly; errors become ``ConfigError`` naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _AliasFound as e:
        raise ConfigError(
            f"{source}:{e.problem_mark.line + 1}: YAML aliases (*name) are not allowed in kinetix "
            "configs (they can expand without bound); write the value out in full"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{loc}: not valid YAML ({getattr(e, 'problem', None) or e})") from None


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
            return _finite(float(value), where)
        if opt is float and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
            else:
                return _finite(number, where)
        if opt is str and isinstance(value, str):
            return value
        if opt is list and isinstance(value, (list, tuple)):
            return list(value)
        if opt is dict and isinstance(value, dict):
            return dict(value)
    raise ConfigError(f"{where}expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _finite(value: float, where: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{where}must be a finite number, got {value!r}")
    return value


def _check_finite(value, where: str) -> None:
    """No NaN / infinity anywhere in a (nested) value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v, where)


def _bound_text(lo, hi, lo_in: bool, hi_in: bool) -> str:
    if hi is None:
        return f"{'>=' if lo_in else '>'} {lo}"
    return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"


def check_value(key: str, value, where: str = "") -> None:
    """Range / choice / list-shape check of one resolved value (``ConfigError`` naming ``where``)."""
    if value is None:
        return
    if isinstance(value, (dict, list, float)):
        _check_finite(value, f"{where}{key}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    if key in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi, lo_in, hi_in = RANGES[key]
        ok = (value >= lo if lo_in else value > lo) if lo is not None else True
        ok = ok and ((value <= hi if hi_in else value < hi) if hi is not None else True)
        if not ok:
            raise ConfigError(f"{where}{key}: must be {_bound_text(lo, hi, lo_in, hi_in)}, got {value!r}")
    if key in LISTS:
        length, kind = LISTS[key]
        if length is not None and len(value) != length:
            raise ConfigError(f"{where}{key}: expected a list of {length} numbers, got {value!r}")
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(f"{where}{key}: expected numbers, got {item!r} in {value!r}")
            if kind is int and (not isinstance(item, int) or item < 1):
                raise ConfigError(f"{where}{key}: expected positive integers, got {value!r}")
            if not math.isfinite(item):
                raise ConfigError(f"{where}{key}: expected finite numbers, got {value!r}")
    if key == "train.devices" and not (
        value == "auto" or (isinstance(value, int) and (value >= 1 or value == -1))
    ):
        raise ConfigError(
            f"{where}{key}: expected a number of devices >= 1 (or -1: all, or 'auto'), got {value!r}"
        )
    if key in ("data.std",) and any(v <= 0 for v in value):
        raise ConfigError(f"{where}{key}: standard deviations must be > 0, got {value!r}")
    if key == "optim.betas" and not all(0 <= v < 1 for v in value):
        raise ConfigError(f"{where}{key}: betas must be in [0, 1), got {value!r}")


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
        _check_finite(value, f"{where}{key}")
        container[".".join(parts[2:])] = value
        return
    elif len(parts) >= 2 and parts[0] == "extra":
        _check_finite(value, f"{where}{key}")
        cfg.extra[".".join(parts[1:])] = value
        return
    else:
        raise ConfigError(f"{where}unknown key '{key}'.{_suggest(key)}")
    value = _coerce(value, _hints(type(obj))[leaf], f"{where}{key}: ")
    check_value(key, value, where)
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
    text: str,
    form: str = "section.key=value",
    example: str = "--set optim.lr=0.01 or --set eval.views=[10,3]",
) -> tuple[str, object]:
    """``'KEY=VALUE'`` -> ``(KEY, value)`` with the value parsed as YAML (the one KEY=VALUE parser of
    the command line: config overrides and ``kinetix flops --set``). ``form`` and ``example`` go
    in errors."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or " " in key:
        raise ConfigError(f"bad --set {text!r}: write {form}, e.g. {example}")
    value = _yaml_load(raw, f"--set {text}") if raw.strip() else None
    return key, value


def parse_override(text: str) -> tuple[str, object]:
    """``'optim.lr=0.01'`` -> ``('optim.lr', 0.01)``; the value is parsed as YAML."""
    return parse_key_value(text)


def apply_overrides(cfg: Config, overrides: typing.Iterable[str]) -> Config:
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value, f"--set {text}: ")
    return cfg


def load_config(
    path: str | Path, overrides: typing.Iterable[str] = (), *, require_model: bool = True
) -> Config:
    """Read a YAML config strictly and apply ``--set``-style overrides.

    The file (or an override) must name the model (``model.name``): a config without one is an
    error, never a silent default."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a config file" if path.is_dir() else "no such config file"
        raise ConfigError(f"{path}: {what}. See configs/ for examples.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save the config as UTF-8"
        ) from None
    data = _yaml_load(text, str(path))
    cfg = config_from_dict(data or {}, str(path), _key_lines(text))
    overrides = list(overrides)
    named = isinstance(data, dict) and isinstance(data.get("model"), dict) and "name" in data["model"]
    if require_model and not named and not any(o.split("=", 1)[0].strip() == "model.name" for o in overrides):
        raise ConfigError(
            f"{path}: the config names no model: add a section `model:` with `name: MODEL` "
            "(`kinetix models` lists them), or pass --set model.name=MODEL"
        )
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

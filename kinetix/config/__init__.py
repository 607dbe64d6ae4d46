"""Strict flat-YAML experiment configs: schema, loader, ``--set section.key=value`` overrides."""

from .loader import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    get_key,
    load_config,
    parse_key_value,
    parse_override,
    set_key,
    valid_keys,
)
from .schema import Config

__all__ = [
    "Config",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "get_key",
    "load_config",
    "parse_key_value",
    "parse_override",
    "set_key",
    "valid_keys",
]

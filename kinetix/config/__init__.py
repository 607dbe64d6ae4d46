"""Strict flat-YAML experiment configs."""

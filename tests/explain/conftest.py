"""Shared fixtures of the explain tests."""

from __future__ import annotations

import pytest

from kinetix.data.synthetic import generate_temporal


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """A small temporal synthetic dataset (6 real mp4s, 32 px, 2 s at 8 fps) with shape masks."""
    out = tmp_path_factory.mktemp("synth")
    generate_temporal(out, num_videos=6, size=32, fps=8, seconds=2.0, seed=0,
                      classes=["growing", "shrinking", "moving left"])  # fmt: skip
    return out

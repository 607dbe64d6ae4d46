"""Fixtures shared by the engine tests: one tiny real-mp4 dataset per module, and no run folder
inherited from the environment."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp4")
    tiny.make_mp4_dataset(out)
    return out


@pytest.fixture(autouse=True)
def _fresh_run_dir_env(monkeypatch):
    monkeypatch.delenv("KINETIX_RUN_DIR", raising=False)

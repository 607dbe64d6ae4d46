"""Fixtures of the bad-input suite: one workspace of real (and damaged) files per session."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import zoo


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    return zoo.build_workspace(tmp_path_factory.mktemp("bad_input"))

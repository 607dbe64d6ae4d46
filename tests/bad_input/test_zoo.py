"""Every ``kinetix`` command on a zoo of damaged and unusual inputs (see ``zoo.py``).

Each case must end with a clear error (exit code != 0, a ``kinetix ...`` line naming the input) or
a counted skip, or, for unusual but valid input, succeed; never a traceback, an internal error, a
changed file outside the output folder, or a hang. The fast part (a representative case of every
command and kind of damage) runs in CI; the whole zoo is ``slow``. A few cases also run as real
subprocesses: what a user's shell sees.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import zoo

ROOT = Path(__file__).resolve().parents[2]


def _run_all(workspace, slow: bool) -> list:
    todo = [c for c in zoo.cases(workspace) if slow or not c.slow]
    results = [zoo.run_case(workspace, c) for c in todo]
    failed = [f"{r.case.id}: {r.problems}\n    {r.err.strip()[-600:]}" for r in results if r.problems]
    assert not failed, "\n".join(failed)
    return results


def test_zoo_fast(workspace):
    results = _run_all(workspace, slow=False)
    totals = zoo.summary(results)
    commands = {r.case.id.split(":")[0] for r in results}
    assert commands >= {
        "predict",
        "test",
        "train",
        "train --resume",
        "detect",
        "data check",
        "data synth",
        "convert",
        "flops",
    }
    assert totals["counted skips"] >= 2 and totals["clear errors"] > 50 and totals["failed"] == 0


@pytest.mark.slow
def test_zoo_whole(workspace):
    results = _run_all(workspace, slow=True)
    totals = zoo.summary(results)
    print(json.dumps(totals))
    assert totals["failed"] == 0 and totals["kinds"] >= 80


def test_every_command_is_in_the_zoo(workspace):
    """A new subcommand must join the zoo (or be listed here as taking no input files)."""
    from kinetix.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    in_zoo = {c.argv[0] for c in zoo.cases(workspace)}
    no_input_files = {"models", "demo"}  # demo writes its own synthetic data; models lists the registry
    assert set(sub.choices) - no_input_files <= in_zoo


def _subprocess(workspace, args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("KINETIX_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "kinetix", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=workspace.root,
    )


@pytest.mark.parametrize(
    ("kind", "make_args"),
    [
        pytest.param(
            "video/truncated-tail",
            lambda ws, b: ["predict", b, "--model", "test_tsm", "--checkpoint", ws.weights],
            marks=pytest.mark.slow,
        ),
        pytest.param("config/yaml-bomb-extra", lambda ws, b: ["train", b], marks=pytest.mark.slow),
        (
            "weights/malicious-pickle",
            lambda ws, b: [
                "convert",
                "--model",
                "test_tsm",
                "--src",
                b,
                "--out",
                ws.out / "sub" / "w.safetensors",
            ],
        ),
    ],
)
def test_real_subprocess_prints_a_clear_error_and_no_traceback(workspace, kind, make_args):
    bad = workspace.bad[kind]
    before = zoo.snapshot(workspace.inputs)
    res = _subprocess(workspace, make_args(workspace, bad))
    assert res.returncode in (1, 2), res.stderr  # 1: predict read what it could and reports the rest
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert any(line.startswith("kinetix") and bad.name in line for line in res.stderr.splitlines()), (
        res.stderr
    )
    assert zoo.snapshot(workspace.inputs) == before
    assert not (workspace.root / "pwned.txt").exists()  # the pickle's payload never ran
    if kind == "weights/malicious-pickle":  # torch's advice to unpickle code is never passed on
        assert "weights_only" not in res.stderr and "GLOBAL posix.system" in res.stderr

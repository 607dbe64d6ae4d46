"""The README is a tested user guide.

Fast (CI): every code block is well-formed, every ``kinetix`` command in it (skipped blocks and
inline code included) parses with the real CLI parser, the command table names real commands and
options, and the demo table is exactly what ``docs/update_readme_demo.py`` renders from the demo's
committed ``report.json`` files.

Slow: every ```bash and ```python block runs, in order, in an empty temporary folder (``configs/``
linked in), on the small synthetic data the README's own commands write; blocks preceded by
``<!-- readme: skip -->`` are left out. Python blocks share one namespace, like a notebook. The
model table's params and GMACs are re-counted.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from kinetix.cli.main import build_parser
from kinetix.models._complexity import model_complexity

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = "<!-- readme: skip -->"
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: bool

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def readme_blocks(text: str) -> list[Block]:
    """Fenced code blocks in order; a block is skipped when the line right before its fence is SKIP."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent = i, len(m.group(1))
        j = i + 1
        while j < len(lines) and not FENCE.match(lines[j]):
            j += 1
        if j == len(lines):
            raise AssertionError(f"README.md:{start + 1}: code fence is never closed")
        code = "\n".join(line[indent:] for line in lines[start + 1 : j])
        skip = start > 0 and lines[start - 1].strip() == SKIP
        blocks.append(Block(m.group(2), code, start + 1, skip))
        i = j + 1
    return blocks


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(line)
    return out


def kinetix_argv(command: str) -> list[str] | None:
    """``kinetix ...`` / ``python -m kinetix ...`` / ``torchrun ... -m kinetix ...`` -> the argv after
    ``kinetix`` (up to a shell operator); None when the command does not run kinetix."""
    words = shlex.split(command, comments=True)
    for i, w in enumerate(words):
        if w == "kinetix" and (i == 0 or words[i - 1] in ("-m", "srun", "exec", "time")):
            argv = []
            for a in words[i + 1 :]:
                if a in ("|", "||", "&&", ";", ">", ">>", "2>", "&"):
                    break
                argv.append(a)
            return argv
    return None


TEXT = README.read_text()
BLOCKS = readme_blocks(TEXT)


def _load_demo_script():
    spec = importlib.util.spec_from_file_location(
        "update_readme_demo", ROOT / "docs" / "update_readme_demo.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------
# fast: structure, commands, tables
# ---------------------------------------------------------------------------------------------


def test_blocks_are_well_formed():
    assert not any(p in TEXT for p in ("shared/DESIGN", "shared/reference")), "README points outside the repo"
    runnable = [b for b in BLOCKS if b.lang in ("bash", "python") and not b.skip]
    assert sum(b.lang == "bash" for b in runnable) >= 3 and sum(b.lang == "python" for b in runnable) >= 3
    for b in BLOCKS:
        assert b.lang, f"{b}: give the fence a language (bash, python, yaml, ...)"
    # a skip marker must sit directly before a fence, or it silently exempts nothing
    lines = TEXT.splitlines()
    for n, line in enumerate(lines):
        if line.strip() == SKIP:
            assert n + 1 < len(lines) and FENCE.match(lines[n + 1]), (
                f"README.md:{n + 1}: {SKIP} not before a fence"
            )


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=str)
def test_python_blocks_compile(block):
    compile(block.code, str(block), "exec")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "bash"], ids=str)
def test_bash_blocks_parse(block):
    res = subprocess.run(["bash", "-n"], input=block.code, text=True, capture_output=True)
    assert res.returncode == 0, f"{block}: {res.stderr}"


def _all_kinetix_commands() -> list[tuple[str, list[str]]]:
    cmds = []
    for b in BLOCKS:
        if b.lang == "bash":
            for c in shell_commands(b.code):
                argv = kinetix_argv(c)
                if argv is not None:
                    cmds.append((f"{b}: {c.strip()}", argv))
    return cmds


def test_every_kinetix_command_parses():
    """Each ``kinetix`` command the README shows (also in skipped blocks and inline) is accepted by
    the CLI parser: no renamed option, no missing argument, no unknown command."""
    cmds = _all_kinetix_commands()
    assert len(cmds) >= 15
    for where, argv in cmds:
        if "--help" in argv or "--version" in argv:
            continue
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as e:
            raise AssertionError(f"{where}: the kinetix parser rejects it") from e
        assert getattr(args, "func", None), f"{where}: not a complete command"


def _command_table() -> list[str]:
    section = TEXT.split("## Command line", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `kinetix ")]


def _subcommands(parser) -> dict:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _check_usage(usage: str, where: str) -> None:
    """A ``kinetix COMMAND ...`` usage pattern names a real command and only its real options."""
    words = usage.split()
    commands = _subcommands(build_parser())
    if words[1].endswith(":"):  # a message the command prints (`kinetix test: warning: ...`)
        assert words[1][:-1] in commands, f"{where}: `{usage}`: no command {words[1][:-1]!r}"
        return
    assert words[1] in commands, f"{where}: `{usage}`: no command {words[1]!r}"
    p = commands[words[1]]
    if words[1] == "data" and len(words) > 2 and not words[2].startswith("-"):
        p = _subcommands(p)[words[2]]
    known = {o for a in p._actions for o in a.option_strings}
    for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", usage):
        assert flag in known, f"{where}: `{usage}` shows {flag}, which `kinetix {words[1]}` does not have"


def test_command_table_lists_every_command_and_real_options():
    rows = _command_table()
    listed = {row.split("`")[1].split()[1] for row in rows}
    missing = set(_subcommands(build_parser())) - listed
    assert not missing, f"commands missing from the README command table: {missing}"
    for row in rows:
        _check_usage(row.split("`")[1], "README command table")


def test_inline_commands_use_real_options():
    # commands, not message formats such as `kinetix COMMAND: error: ...` or `kinetix test: warning: ...`
    spans = re.findall(r"`(kinetix [a-z][\w-]*(?: [^`]*)?)`", TEXT)
    assert len(spans) >= 10
    for usage in spans:
        _check_usage(usage, "README.md")


def test_demo_table_is_rendered_from_the_demo_reports():
    """The README's demo figures are the ones the demo wrote: the block between the markers is
    exactly what docs/update_readme_demo.py renders from the committed report.json files."""
    script = _load_demo_script()
    reports = script.committed_reports()
    assert {r["mode"] for r in reports} <= {"full", "quick"}, (
        "docs/demo/ holds the full and quick reports only"
    )
    for r in reports:
        assert set(r["models"]) >= {"test_tsn", "test_tsm"} and r["seconds"]["total"] > 0
    assert script.readme_block(TEXT) == script.render_table(reports), (
        "README demo table is stale: run `python docs/update_readme_demo.py`"
    )


def test_demo_table_rendering():
    """The renderer shows every model of every report with its own figures."""
    script = _load_demo_script()
    split = {"top1": 50.0, "pairs_top1": 40.0, "pairs_direction": 51.5, "appearance_top1": 100.0}
    report = {
        "mode": "quick",
        "seed": 3,
        "kinetix": "9.9",
        "seconds": {"total": 150.0},
        "models": {
            "test_tsn": {"normal": split, "reversed": {**split, "pairs_top1": 39.0}, "train_seconds": 61.2},
            "test_tsm": {
                "normal": {**split, "pairs_direction": 99.4},
                "reversed": split,
                "train_seconds": 70,
                "explain": {"mask_mass_share": 12.34, "uniform_share": 4.0},
            },
        },
    }
    table = script.render_table([report])
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # after the header
    assert len(rows) == 2 and rows[0].startswith(
        "| `kinetix demo --quick` | TSN | 50.0% | 40.0% | **51.5%** | 39.0%"
    )
    assert "| TSM |" in rows[1] and "**99.4%**" in rows[1] and "61 s" in rows[0]
    assert "| 12.3% (4.0%) |" in rows[1] and "| – |" in rows[0]  # explain figures where measured
    assert "2.5 min" in table and "seed 3" in table
    assert "make demo" in script.render_table([])  # no report committed: says how to make one
    new = script.replace_block(f"a\n{script.START}\nold\n{script.END}\nb", table)
    assert script.readme_block(new) == table and new.startswith("a\n") and new.endswith("\nb")
    trimmed = script.trim(
        {"models": {"m": {"checkpoint": "/tmp/x", "normal": {"confusion_png": "/x", "top1": 1}}}}
    )
    assert trimmed == {"models": {"m": {"normal": {"top1": 1}}}}


def test_links_to_repository_files_exist():
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


# ---------------------------------------------------------------------------------------------
# slow: run the README, re-count the model table
# ---------------------------------------------------------------------------------------------


def _model_table_rows() -> list[tuple[list[str], list[float], list[float]]]:
    """(names, params (M), GMACs) of each row of the README's model table."""
    section = TEXT.split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "=" in cells[0]:  # a variant built with constructor arguments
            continue
        names = re.findall(r"`([\w.]+)`", cells[0])
        names = [n if not n.startswith("_") else names[0].rsplit("_", 1)[0] + n for n in names]

        def numbers(cell: str) -> list[float]:
            head = cell.split("(")[0]
            return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", head)]

        rows.append((names, numbers(cells[2]), numbers(cells[3])))
    return rows


@pytest.mark.slow
def test_model_table_matches_the_counts():
    rows = _model_table_rows()
    assert len(rows) >= 20
    for names, params, gmacs in rows:
        for i, name in enumerate(names):
            res = model_complexity(name)
            p, g = params[i if len(params) > 1 else 0], gmacs[i if len(gmacs) > 1 else 0]
            assert abs(res.params / 1e6 - p) < 0.006, (
                f"README model table: {name} params {p} M, counted {res.params / 1e6:.2f}"
            )
            assert abs(res.gmacs - g) < 0.006, (
                f"README model table: {name} {g} GMACs, counted {res.gmacs:.2f}"
            )


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a few minutes on 2 idle cores; a loaded machine needs more
def test_readme_runs(tmp_path, monkeypatch):
    """Run every non-skipped bash and python block in order, as a user would in a fresh folder."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "kinetix"  # the `kinetix` of this checkout and interpreter
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m kinetix "$@"\n')
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "MPLBACKEND": "Agg",
    }
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    ran = 0
    for block in BLOCKS:
        if block.skip or block.lang not in ("bash", "python"):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] running {block}", flush=True)
        if block.lang == "bash":
            res = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block.code],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=1800,
            )
            assert res.returncode == 0, (
                f"{block} failed:\n{block.code}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"
            )
        else:
            exec(compile(block.code, str(block), "exec"), namespace)
        ran += 1
    assert ran >= 6

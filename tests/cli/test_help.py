"""Every ``kinetix`` command's ``--help`` has examples that parse, every option is explained, and
every benchmark script's ``--help`` shows its whole description."""

import argparse
import ast
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from kinetix.cli.main import build_parser

BENCHMARKS = sorted((Path(__file__).parents[2] / "benchmarks").glob("*.py"))


def _subparsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command path, parser) for every subcommand, nested ones (``data synth``) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def _example_commands(epilog: str) -> list[list[str]]:
    """The ``kinetix ...`` lines of an ``examples:`` epilog as argv lists (comments dropped,
    backslash continuations joined)."""
    text = epilog.split("examples:", 1)[1].replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("kinetix "):
            cmds.append(shlex.split(line, comments=True)[1:])
    return cmds


COMMANDS = list(_subparsers(build_parser()))


def test_every_command_is_found():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "demo",
        "train",
        "test",
        "predict",
        "models",
        "flops",
        "convert",
        "data synth",
        "data check",
    } <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_has_examples_that_parse(path, parser):
    text = parser.format_help()
    assert "examples:" in text, f"`kinetix {' '.join(path)} --help` has no 'examples:' section"
    examples = _example_commands(parser.epilog)
    assert examples, f"`kinetix {' '.join(path)} --help`: no `kinetix ...` command under 'examples:'"
    for argv in examples:
        assert argv[: len(path)] == list(path), f"example of `{' '.join(path)}` runs another command: {argv}"
        try:
            build_parser().parse_args(argv)
        except SystemExit as e:  # argparse exits on an unknown option or a missing argument
            raise AssertionError(f"help example does not parse: kinetix {shlex.join(argv)}") from e


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help(path, parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"`kinetix {' '.join(path)}` {name} has no help text"


def test_help_examples_are_checked(capsys):
    # the example parser above would catch a wrong option: check it does
    with pytest.raises(SystemExit):
        build_parser().parse_args(["models", "--no-such-option"])
    assert _example_commands("examples:\n  kinetix a --b \\\n      c  # note\nthen: kinetix x") == [
        ["a", "--b", "c"]
    ]


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_help_is_complete(script, capsys, monkeypatch):
    """``python benchmarks/X.py --help`` prints the script's whole docstring (not a first line cut
    mid-sentence) and explains every option."""
    parsers = []
    parse_args = argparse.ArgumentParser.parse_args

    def spy(self, *args, **kwargs):
        parsers.append(self)
        return parse_args(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))  # as `python benchmarks/X.py` runs it
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(script), run_name="__main__")
    assert e.value.code == 0 and parsers, f"{script.name} --help did not exit cleanly through argparse"
    out = capsys.readouterr().out
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc and " ".join(doc.split()) in " ".join(out.split()), f"{script.name} --help lacks its docstring"
    for action in parsers[-1]._actions:
        if not isinstance(action, argparse._HelpAction):
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{script.name}: {name} has no help text"

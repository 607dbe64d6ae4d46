"""Regenerate the README's demo table from the demo's own ``report.json`` files.

    make demo && kinetix demo --quick --out demo_quick
    python docs/update_readme_demo.py demo_out/report.json demo_quick/report.json

copies each report (trimmed of machine-specific paths) to ``docs/demo/report_<mode>.json`` and
rewrites the README block between ``<!-- demo-table:start -->`` and ``<!-- demo-table:end -->``
with :func:`render_table`. Without arguments it re-renders the block from the committed reports;
``--check`` only compares and exits 1 when the README differs. ``tests/test_readme.py`` runs the
same comparison, so the README's demo figures are always the ones a demo run wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPORTS = ROOT / "docs" / "demo"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"
RUNS = {"full": "`make demo`", "quick": "`kinetix demo --quick`", "smoke": "`kinetix demo --smoke`"}
MACHINE_KEYS = ("checkpoint", "confusion_png", "path")  # absolute paths of one machine's run


def _name(model: str) -> str:
    """``test_tsm`` -> ``TSM`` (the demo trains the tiny ``test_*`` variants)."""
    return model.removeprefix("test_").upper()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _mass(result: dict) -> str:
    """Share of the explanation map's mass inside the moving shape, and a uniform map's share."""
    e = result.get("explain") or {}
    if e.get("mask_mass_share") is None:
        return "–"
    return f"{e['mask_mass_share']:.1f}% ({e['uniform_share']:.1f}%)"


def trim(report: dict) -> dict:
    """The report without the absolute paths of the machine that ran it."""
    if isinstance(report, dict):
        return {k: trim(v) for k, v in report.items() if k not in MACHINE_KEYS}
    if isinstance(report, list):
        return [trim(v) for v in report]
    return report


def render_table(reports: list[dict]) -> str:
    """The README's demo table (markdown) from demo reports, full demo first."""
    if not reports:
        return (
            "_No demo figures are committed for this version yet: run `make demo` and `kinetix demo "
            "--quick --out demo_quick`, then `python docs/update_readme_demo.py demo_out/report.json "
            "demo_quick/report.json`._"
        )
    order = list(RUNS)
    reports = sorted(reports, key=lambda r: order.index(r["mode"]) if r["mode"] in order else len(order))
    lines = [
        "| run | model | top-1 | top-1 on pair classes | direction within pairs (chance 50%) "
        "| pairs, time-reversed input | map mass inside the shape (uniform map) | training |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        run = RUNS.get(report["mode"], f"`kinetix demo` ({report['mode']})")
        for i, (model, r) in enumerate(report["models"].items()):
            n, rev = r["normal"], r["reversed"]
            lines.append(
                f"| {run if i == 0 else ''} | {_name(model)} | {n['top1']:.1f}% | {n['pairs_top1']:.1f}% | "
                f"**{n['pairs_direction']:.1f}%** | {rev['pairs_top1']:.1f}% | {_mass(r)} | "
                f"{r['train_seconds']:.0f} s |"
            )
    totals = ", ".join(f"{RUNS.get(r['mode'], r['mode'])} {_minutes(r['seconds']['total'])}" for r in reports)
    seeds = sorted({r["seed"] for r in reports})
    lines += [
        "",
        f"Total time: {totals} (seed {', '.join(map(str, seeds))}, kinetix {reports[0]['kinetix']}).",
    ]
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between the START and END markers replaced by ``table``."""
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md must contain {START} and {END} once each")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def readme_block(text: str) -> str:
    """The current content between the markers."""
    return text.split(START)[1].split(END)[0].strip("\n")


def committed_reports() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(REPORTS.glob("report_*.json"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="*", type=Path, help="report.json files written by `kinetix demo`")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if the README is stale")
    args = ap.parse_args(argv)
    for path in args.reports:
        report = trim(json.loads(path.read_text()))
        REPORTS.mkdir(parents=True, exist_ok=True)
        (REPORTS / f"report_{report['mode']}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = README.read_text()
    new = replace_block(text, render_table(committed_reports()))
    if args.check:
        if new != text:
            print("README.md's demo table differs from docs/demo/report_*.json", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(
        f"updated {README} from {', '.join(p.name for p in sorted(REPORTS.glob('report_*.json'))) or 'no reports'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

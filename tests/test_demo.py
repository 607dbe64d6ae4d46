"""The embedded demo: a seconds-long ``--smoke`` run checks the pipeline and the report structure;
the real ``--quick`` run (marked slow) checks the claim: TSN near chance on the time-reversed
pairs, TSM at least 90%."""

import importlib.util
import json
from pathlib import Path

import pytest

from kinetix.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def _check_report(out, models):
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == set(models)
    for m in models:
        r = report["models"][m]
        for split in ("normal", "reversed"):
            assert 0.0 <= r[split]["top1"] <= 100.0 and 0.0 <= r[split]["pairs_top1"] <= 100.0
            assert (out / r[split]["confusion_png"]).is_file() or __import__("pathlib").Path(
                r[split]["confusion_png"]
            ).is_file()
        assert r["params"] > 0 and r["train_seconds"] >= 0
    assert report["dataset"]["reversed_pairs"] == [[0, 1], [2, 3], [4, 5]]
    assert set(report["claim"]) == {"tsn_pairs_near_chance", "temporal_models_at_least_90"}
    md = (out / "report.md").read_text()
    assert all(f"| {m} |" in md for m in models) and "![accuracy](accuracy.png)" in md
    for png in ("accuracy.png", "curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    return report


def test_demo_smoke_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--smoke", "--out", str(out), "--no-progress"]) == 0
    report = _check_report(out, ["test_tsn", "test_tsm"])
    # docs/update_readme_demo.py renders the README's demo table from this very file
    spec = importlib.util.spec_from_file_location("readme_demo", ROOT / "docs" / "update_readme_demo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    table = script.render_table([json.loads((out / "report.json").read_text())])
    tsm = report["models"]["test_tsm"]
    assert f"| TSM | {tsm['normal']['top1']:.1f}% | {tsm['normal']['pairs_top1']:.1f}% |" in table
    _check_html_and_pictures(out)
    text = capsys.readouterr().out
    assert "pairs, reversed input" in text and "TSN direction on reversed pairs near chance" in text
    # the runs are ordinary kinetix runs: configs saved, checkpoints loadable
    assert (out / "runs" / "test_tsm" / "config.yaml").is_file()
    # a second run into the same demo folder replaces it; a foreign folder is refused
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    assert main(["demo", "--smoke", "--out", str(foreign)]) == 2
    assert "not a kinetix demo folder" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "x"


@pytest.mark.slow
def test_quick_demo_shows_the_claim(tmp_path):
    out = tmp_path / "demo"
    main(["demo", "--quick", "--out", str(out), "--no-progress"])
    report = _check_report(out, ["test_tsn", "test_tsm"])
    assert 35.0 <= report["models"]["test_tsn"]["normal"]["pairs_direction"] <= 65.0
    assert report["models"]["test_tsm"]["normal"]["pairs_direction"] >= 90.0
    assert report["models"]["test_tsm"]["reversed"]["pairs_top1"] <= 20.0  # reversed clips flip it
    # the README's figures (rendered from docs/demo/report_quick.json) are what this code gives;
    # a few points of slack for thread-count-dependent float sums over 40 epochs
    committed = ROOT / "docs" / "demo" / "report_quick.json"
    readme = json.loads(committed.read_text()) if committed.exists() else {"models": {}}
    for m in readme["models"]:
        for split in ("normal", "reversed"):
            for key in ("top1", "pairs_top1", "pairs_direction"):
                got, shown = report["models"][m][split][key], readme["models"][m][split][key]
                assert abs(got - shown) <= 5.0, (
                    f"README demo table is stale ({m} {split} {key}: README {shown}, now {got}): rerun "
                    "`make demo`, `kinetix demo --quick --out Q` and `python docs/update_readme_demo.py "
                    "demo_out/report.json Q/report.json`"
                )


class _Page(__import__("html.parser").parser.HTMLParser):
    """Collects referenced files and checks that every opened element is closed in order."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "source", "input"})

    def __init__(self):
        super().__init__()
        self.refs, self.stack, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def _check_html_and_pictures(out):
    """report.html parses, closes what it opens, and every file it references exists; the
    explanation pictures cover every pair class and the mask-mass numbers are shares."""
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    page.close()
    assert not page.errors and not page.stack, (page.errors, page.stack)
    assert page.refs and all(not r.startswith(("/", "http")) for r in page.refs)
    missing = [r for r in page.refs if not (out / r).is_file()]
    assert not missing, missing
    report = json.loads((out / "report.json").read_text())
    pics = report["explain"]
    classes = report["dataset"]["classes"]
    assert {p["class"] for p in pics} == {
        classes[c] for pair in report["dataset"]["reversed_pairs"] for c in pair
    }
    assert all(p["png"] in page.refs and p["mp4"] in page.refs for p in pics)
    for m, r in report["models"].items():
        x = r["explain"]
        assert x["method"] == "gradcam" and x["clips"] > 0, m
        assert 0 <= x["mask_mass_share"] <= 100 and 0 < x["uniform_share"] < 100
    md = (out / "report.md").read_text()
    assert "## What the models look at" in md and pics[0]["png"] in md
    _screenshot(out)


def _screenshot(out):
    """Where a headless Chromium is installed: the page renders with its pictures (many colours)."""
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image

    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        return
    shot = out / "report_screenshot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1100,2400", f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=False)  # fmt: skip
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1100)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # plots and heat maps, not a blank page

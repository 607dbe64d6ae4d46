"""``kinetix train / test / predict`` run in-process through ``kinetix.cli.main.main``."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import tiny

from kinetix.cli.main import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run through the CLI, shared by the tests below."""
    import os

    os.environ.pop("KINETIX_RUN_DIR", None)
    tmp = tmp_path_factory.mktemp("cli")
    data = tmp / "data"
    tiny.make_mp4_dataset(data)
    cfg = tmp / "cfg.yaml"
    cfg.write_text(tiny.config_text(data, tmp / "runs", train={"epochs": 1}))
    assert main(["train", str(cfg), "--set", "optim.lr=0.02", "train.name=cli"]) == 0
    return tmp, cfg, data


def test_train_saves_overrides_and_checkpoints(trained):
    tmp, _, _ = trained
    run_dir = tmp / "runs" / "cli"
    assert (run_dir / "config.yaml").read_text().count("lr: 0.02") == 1
    assert (run_dir / "checkpoints" / "best" / "model.safetensors").is_file()


def test_test_command_multiview_and_reversed(trained, capsys):
    tmp, cfg, _ = trained
    ckpt = tmp / "runs" / "cli"
    capsys.readouterr()
    assert (
        main(
            [
                "test",
                str(cfg),
                "--checkpoint",
                str(ckpt),
                "--views",
                "2x1",
                "--aggregate",
                "probs",
                "--out",
                str(tmp / "ev"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2 clips x 1 crops = 2 per video (2 distinct), aggregated as probs" in out
    assert "top1:" in out and "mean-class:" in out
    metrics = json.loads((tmp / "ev" / "metrics.json").read_text())
    assert metrics["aggregate"] == "probs" and metrics["count"] == 6
    assert (tmp / "ev" / "per_class.csv").is_file() and (tmp / "ev" / "confusion.png").is_file()
    assert main(["test", str(cfg), "--checkpoint", str(ckpt), "--reverse-frames"]) == 0
    assert "time-reversed" in capsys.readouterr().out


def test_predict_from_checkpoint_text_and_json(trained, capsys):
    tmp, _, data = trained
    videos = sorted((data / "videos").glob("*.mp4"))[:2]
    ckpt = tmp / "runs" / "cli" / "checkpoints" / "best"
    capsys.readouterr()
    assert main(["predict", *map(str, videos), "--checkpoint", str(ckpt), "--topk", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["video"] for r in res] == [str(v) for v in videos]
    for r in res:
        assert len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"]
        assert {t["name"] for t in r["top"]} <= set(tiny.CLASSES)  # names from the checkpoint
    # the same numbers as the library's multi-view scoring on the weights file
    assert (
        main(["predict", str(videos[0]), "--checkpoint", str(ckpt / "model.safetensors"), "--topk", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert text.splitlines()[1].strip().endswith(res[0]["top"][0]["name"])


@pytest.mark.filterwarnings("ignore:only . of . test views are distinct")
@pytest.mark.parametrize("views", ["2x1", "3x3"])
def test_test_and_predict_score_the_same_views(trained, capsys, views):
    """One test-view path: `kinetix test` and `kinetix predict` give each video the same scores for
    the same checkpoint and views (2 clips: TSM's two-clip protocol in both)."""
    tmp, cfg, _ = trained
    ckpt = tmp / "runs" / "cli" / "checkpoints" / "best"
    out = tmp / f"same-{views}"
    assert main(["test", str(cfg), "--checkpoint", str(ckpt), "--views", views, "--out", str(out)]) == 0
    tested = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(tested) == 6
    capsys.readouterr()
    videos = [r["video"] for r in tested]
    assert (
        main(["predict", *videos, "--checkpoint", str(ckpt), "--views", views, "--topk", "3", "--json"]) == 0
    )
    predicted = json.loads(capsys.readouterr().out)
    for t, p in zip(tested, predicted):
        assert p["views"] == int(views[0]) * int(views[2])
        assert [c["label"] for c in p["top"]] == [c["label"] for c in t["top"][:3]]
        assert [c["prob"] for c in p["top"]] == pytest.approx([c["prob"] for c in t["top"][:3]], abs=1e-5)


def test_inference_backends_score_the_same(trained, capsys):
    """``--backend`` changes how the model runs, never the scores: ``test`` through onnxruntime
    (an export checked against PyTorch) and ``predict`` through each backend equal the default path."""
    tmp, cfg, _ = trained
    ckpt = tmp / "runs" / "cli" / "checkpoints" / "best"
    runs = {}
    for backend in (None, "onnxruntime"):
        out = tmp / f"backend-{backend}"
        extra = ["--backend", backend] if backend else []
        assert (
            main(["test", str(cfg), "--checkpoint", str(ckpt), "--views", "2x1", "--out", str(out), *extra])
            == 0
        )
        runs[backend] = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        used = json.loads((out / "metrics.json").read_text())["inference"]
        assert used == ["onnxruntime"] if backend else set(used) <= {"eager", "onednn"}
        assert f"scored (inference: {', '.join(used)})" in capsys.readouterr().out
    for a, b in zip(runs[None], runs["onnxruntime"]):
        assert a["video"] == b["video"] and [c["label"] for c in a["top"]] == [c["label"] for c in b["top"]]
        assert [c["prob"] for c in a["top"]] == pytest.approx([c["prob"] for c in b["top"]], abs=1e-4)
    videos = [r["video"] for r in runs[None]][:2]
    preds = {}
    for backend in (None, "eager", "onednn", "onnxruntime", "auto"):
        capsys.readouterr()
        extra = ["--backend", backend] if backend else []
        assert main(["predict", *videos, "--checkpoint", str(ckpt), "--views", "2x1", "--json", *extra]) == 0
        preds[backend] = json.loads(capsys.readouterr().out)
    for backend, res in preds.items():
        for r, ref in zip(res, preds[None]):
            assert [c["label"] for c in r["top"]] == [c["label"] for c in ref["top"]], backend
            assert [c["prob"] for c in r["top"]] == pytest.approx([c["prob"] for c in ref["top"]], abs=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "missing.yaml"], "no such config file"),
        (["test", "CFG", "--checkpoint", "CKPT", "--views", "10by3"], "--views must look like CLIPSxCROPS"),
        (["test", "CFG", "--checkpoint", "CKPT", "--views", "2x4"], "crops must be 1, 3 or 10"),
        (["train", "CFG", "--set", "optim.lrr=0.1"], "unknown key 'optim.lrr'. Did you mean 'optim.lr'"),
        (["train", "CFG", "--set", "optim.lr"], "write section.key=value"),
        (["test", "CFG", "--checkpoint", "nowhere"], "no such checkpoint"),
        (["predict", "nope.mp4", "--checkpoint", "CKPT"], "no such video: nope.mp4"),
        (["predict", "VIDEO"], "pass --checkpoint CKPT (a trained kinetix checkpoint) or --model NAME"),
        (["predict", "VIDEO", "--checkpoint", "CKPT", "--topk", "0"], "--topk must be >= 1"),
    ],
)
def test_errors_say_what_to_fix(trained, capsys, argv, message):
    tmp, cfg, data = trained
    video = str(sorted((data / "videos").glob("*.mp4"))[0])
    subs = {"CFG": str(cfg), "CKPT": str(tmp / "runs" / "cli"), "VIDEO": video}
    argv = [subs.get(a, a) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_flag_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["test", "cfg.yaml"])  # --checkpoint is required
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "--topk" in capsys.readouterr().out

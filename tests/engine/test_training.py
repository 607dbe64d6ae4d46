"""Real Lightning training of a tiny model on real mp4 files: checkpoints, manifest, EMA, partial BN,
resume, non-finite loss, evaluation reports, keep-rate warm-up of a pruning ViT."""

import itertools
import json
import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny

from kinetix.config import load_config
from kinetix.engine import run
from kinetix.engine.checkpoint import list_checkpoints, read_manifest
from kinetix.engine.module import TrainingDivergedError
from kinetix.errors import ConfigError
from kinetix.layers.token_pruning import pruning_blocks, scheduled_keep_rate
from kinetix.models import create_model


def _cfg(tmp_path, data_dir, overrides=(), **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "cfg.yaml"
    p.write_text(tiny.config_text(data_dir, tmp_path / "runs", **sections))
    return load_config(p, overrides)


def test_fit_writes_checkpoints_manifest_and_config(tmp_path, data_dir):
    cfg = _cfg(
        tmp_path, data_dir, ["train.ema=true", "train.checkpoint_every_n_steps=2", "train.keep_last=2"]
    )
    out = run.fit(cfg)
    run_dir = out["run_dir"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "version_0" / "metrics.csv").is_file()
    ckpts = list_checkpoints(run_dir)
    assert len(ckpts) == 2  # pruned to keep_last
    last = ckpts[-1]
    assert out["checkpoint"] == last and out["best"] is not None
    man = read_manifest(last)
    assert man["global_step"] == 6 and man["model"] == "engine_tiny"  # 12 train videos / 4 * 2 epochs
    assert man["class_names"] == list(tiny.CLASSES)
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "val", "val"):
        f = data_dir / f"{split}.txt"
        h.update(f.name.encode())
        h.update(f.read_bytes())
    assert man["dataset_fingerprint"] == h.hexdigest()
    assert man["config"]["train"]["ema"] is True and load_config(last / "config.yaml") == cfg
    # the weights file loads straight into a fresh model and equals the trained weights
    model = create_model("engine_tiny", checkpoint=str(last / "model.safetensors"))
    trained = out["module"].model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    ema = out["module"].ema
    assert int(ema.num_updates) == 6
    assert not torch.equal(ema.module.head.weight, out["module"].model.head.weight)
    # a second run with the same name never overwrites the first
    again = run.make_run_dir(cfg)
    assert again != run_dir and again.name == "tiny-v1"


def test_partial_bn_freezes_all_but_first_batchnorm(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["train.partial_bn=true", "train.epochs=1"])
    before = create_model("engine_tiny", num_classes=3)
    torch.manual_seed(0)
    out = run.fit(cfg)
    m = out["module"].model
    assert not torch.equal(m.bn1.running_mean, before.bn1.running_mean)  # first BN trains
    assert torch.equal(m.blocks[1].running_mean, torch.zeros(8))  # later BN: stats frozen
    assert torch.equal(m.blocks[1].weight, torch.ones(8)) and not m.blocks[1].weight.requires_grad


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path, data_dir):
    """In-process variant of the SIGKILL test (tests/engine/test_distributed_resume.py): crash after step 5
    (mid-epoch 1 of 3), resume from the step-4 checkpoint, compare every tensor (weights, BN
    statistics, EMA) with an uninterrupted run. Dropout, mixup and augmentation are on."""
    import lightning.pytorch as pl

    overrides = [
        "train.epochs=3",
        "train.checkpoint_every_n_steps=2",
        "train.ema=true",
        "train.mixup_alpha=0.4",
        "model.kwargs.drop=0.3",
        "train.keep_last=10",
    ]
    full = run.fit(_cfg(tmp_path / "a", data_dir, overrides))["module"].state_dict()

    class Crash(Exception):
        pass

    class Stop(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 5:
                raise Crash  # dies after step 5 (mid-epoch 1): the last checkpoint is step 4

    cfg_b = _cfg(tmp_path / "b", data_dir, overrides)
    with pytest.raises(Crash):
        run.fit(cfg_b, callbacks=[Stop()])
    run_dir = tmp_path / "b" / "runs" / "tiny"
    assert [c.name for c in list_checkpoints(run_dir)] == ["step-00000002", "step-00000003", "step-00000004"]
    resume_from = run_dir / "checkpoints" / "step-00000004"
    resumed = run.fit(cfg_b, resume=resume_from)["module"].state_dict()
    assert set(full) == set(resumed)
    bad = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not bad, f"differ after resume: {bad}"


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    import lightning.pytorch as pl

    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, module, *args):
            if trainer.global_step == 2:  # the step-2 checkpoint was written at the end of the last batch
                with torch.no_grad():
                    module.model.head.weight.fill_(float("nan"))

    cfg = _cfg(tmp_path, data_dir, ["train.checkpoint_every_n_steps=2", "train.epochs=2"])
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at epoch 0, step 2.*last good checkpoint"):
        run.fit(cfg, callbacks=[Poison()])
    ckpts = list_checkpoints(tmp_path / "runs" / "tiny")
    assert [c.name for c in ckpts] == ["step-00000002"]
    from safetensors.torch import load_file

    weights = load_file(str(ckpts[0] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_evaluate_multiview_reports_and_reversal(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["train.epochs=1"])
    ckpt = run.fit(cfg)["checkpoint"]
    cfg.eval.views = [2, 3]
    # square 16 px frames: the 3 crops along the long side coincide -> 2 distinct views of 6
    with pytest.warns(UserWarning, match="only 2 of 6 test views are distinct"):
        res = run.test(cfg, ckpt, tmp_path / "eval")
    assert res["views"] == [2, 3] and res["distinct_views"] == 2 and res["count"] == 6
    rows = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[1].split(",")[1] == "moving left"
    assert (tmp_path / "eval" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["top1"] == res["top1"]
    # direct computation of the same numbers from the model and dataset
    module, dm = __import__("kinetix.engine.classification", fromlist=["build"]).build(cfg, "test", ckpt)
    run.load_weights(module, ckpt)
    module.model.eval()
    correct = 0
    for i in range(len(dm.test_set)):
        item = dm.test_set[i]
        logits = module.model(item["video"]).mean(0)  # (V, K) -> (K,)
        correct += int(logits.argmax()) == item["label"]
    assert res["top1"] == pytest.approx(100 * correct / len(dm.test_set))
    cfg.eval.reverse_frames = True
    rev = run.test(cfg, ckpt)
    assert Path(rev["report_dir"]).name == "eval-reversed" and rev["reverse_frames"]


def test_bf16_accumulation_clipping_mixup_cutmix_layer_decay(tmp_path, data_dir):
    """The recipe switches run together on CPU: bf16 autocast, gradient accumulation and clipping,
    mixup/CutMix with label smoothing, layer-wise LR decay, head LR multiplier, AdamW, step schedule."""
    cfg = _cfg(
        tmp_path,
        data_dir,
        [
            "train.precision=bf16-mixed",
            "train.accumulate_grad_batches=2",
            "train.gradient_clip_val=0.5",
            "train.mixup_alpha=0.8",
            "train.cutmix_alpha=1.0",
            "train.label_smoothing=0.1",
            "optim.name=adamw",
            "optim.lr=0.001",
            "optim.layer_decay=0.75",
            "optim.head_lr_mult=10",
            "schedule.name=step",
            "schedule.milestones=[1]",
            "train.epochs=2",
        ],
    )
    out = run.fit(cfg)
    trainer, module = out["trainer"], out["module"]
    assert trainer.global_step == 4  # 3 batches per epoch, an optimiser step every 2 (and at epoch end)
    lrs = sorted({round(g["lr"], 8) for g in trainer.optimizers[0].param_groups})
    assert max(lrs) == pytest.approx(0.001 * 10 * 0.1)  # head group after the step at epoch 1
    assert all(torch.isfinite(p).all() for p in module.model.parameters())


def test_scheduled_keep_rate_is_a_cosine_from_one_to_the_target():
    assert scheduled_keep_rate(0.7, 0.0) == 1.0 and scheduled_keep_rate(0.7, -1.0) == 1.0
    assert math.isclose(scheduled_keep_rate(0.7, 1.0), 0.7)
    assert math.isclose(scheduled_keep_rate(0.7, 5.0), 0.7)
    assert math.isclose(scheduled_keep_rate(0.7, 0.5), 0.85)
    rates = [scheduled_keep_rate(0.5, i / 20) for i in range(21)]
    assert all(a > b for a, b in itertools.pairwise(rates))


class _Probe(pl.Callback):
    """Tokens left by the first pruning block in every training step and validation batch."""

    def __init__(self):
        self.train, self.val, self._last = [], [], None

    def on_fit_start(self, trainer, pl_module):
        blk = pruning_blocks(pl_module)[0]
        blk.register_forward_hook(lambda m, i, out: setattr(self, "_last", (m.keep_rate, out.shape[1])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append((trainer.global_step - 1, *self._last))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val.append(self._last)


def test_keep_rate_warm_up_in_a_real_fit(tmp_path, data_dir):
    # test_videomae: 4 frames x 32 px -> 2 slices of 4 x 4 tokens: N = 32, 16 key tokens;
    # keep 0.75 keeps ceil(0.75 * 32) = 24 tokens. 12 videos / batch 4 = 3 steps an epoch, 3 epochs.
    cfg = _cfg(tmp_path, data_dir, [
        "model.name=test_videomae", "model.kwargs={keep_rate: 0.75}", "train.epochs=3",
        "schedule.keep_rate_start_epochs=1", "schedule.keep_rate_shrink_epochs=1",
    ])  # fmt: skip
    probe = _Probe()
    out = run.fit(cfg, callbacks=[probe])
    steps = [s for s, _, _ in probe.train]
    assert steps == list(range(9))
    expected = [1.0] * 4 + [scheduled_keep_rate(0.75, 1 / 3), scheduled_keep_rate(0.75, 2 / 3)] + [0.75] * 3
    assert [r for _, r, _ in probe.train] == pytest.approx(expected)
    assert [n for _, _, n in probe.train] == [32] * 4 + [math.ceil(r * 32) for r in expected[4:]]
    assert probe.val and all(v == (0.75, 24) for v in probe.val)  # validation runs the target model
    assert all(m.keep_rate == 0.75 for m in pruning_blocks(out["module"]))  # and so does the result


def test_keep_rate_schedule_without_pruning_warns_and_bad_values_are_refused(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["schedule.keep_rate_shrink_epochs=1"])  # engine_tiny prunes nothing
    with pytest.warns(UserWarning, match=r"model\.kwargs\.keep_rate is 1"):
        assert run.fit(cfg)["checkpoint"] is not None
    with pytest.raises(ConfigError, match=">= 0"):  # refused when the config is read
        _cfg(tmp_path, data_dir, ["model.name=test_videomae", "model.kwargs={keep_rate: 0.75}",
                                  "schedule.keep_rate_shrink_epochs=-1"])  # fmt: skip

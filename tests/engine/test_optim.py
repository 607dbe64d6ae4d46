"""Parameter groups (no-decay, layer-wise LR decay, head multiplier) and LR schedules vs hand
computation."""

import math

import pytest
import torch
import torch.nn as nn

from kinetix.config import Config, apply_overrides
from kinetix.engine.optim import build_optimizer, build_scheduler, layer_ids, lr_factor, param_groups


class ToyViT(nn.Module):
    def __init__(self, depth=3, dim=4, num_classes=5):
        super().__init__()
        self.patch_embed = nn.Linear(dim, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def get_classifier(self):
        return self.head

    def no_weight_decay(self):
        return {"cls_token"}


def _lookup(groups):
    return {n: g for g in groups for n in g["names"]}


def test_no_decay_groups():
    groups = _lookup(param_groups(ToyViT(), lr=1.0, weight_decay=0.05))
    assert groups["cls_token"]["weight_decay"] == 0.0  # from no_weight_decay(), although 3-D
    assert groups["blocks.0.0.weight"]["weight_decay"] == 0.0  # LayerNorm scale (1-D)
    assert groups["blocks.0.1.bias"]["weight_decay"] == 0.0
    assert groups["blocks.0.1.weight"]["weight_decay"] == 0.05
    assert groups["head.weight"]["weight_decay"] == 0.05
    flat = _lookup(param_groups(ToyViT(), lr=1.0, weight_decay=0.05, no_decay_1d=False))
    assert flat["blocks.0.1.bias"]["weight_decay"] == 0.05 and flat["cls_token"]["weight_decay"] == 0.0


def test_layer_decay_and_head_multiplier_match_hand_computation():
    model = ToyViT(depth=3)
    ids, num_layers = layer_ids(model)
    assert num_layers == 3
    assert ids["patch_embed.weight"] == 0 and ids["cls_token"] == 0
    assert ids["blocks.0.1.weight"] == 1 and ids["blocks.2.0.bias"] == 3
    assert ids["norm.weight"] == 4 and ids["head.weight"] == 4
    groups = _lookup(param_groups(model, lr=0.1, weight_decay=0.0, layer_decay=0.5, head_lr_mult=10.0))
    # lr * decay ** (L + 1 - depth)
    assert groups["patch_embed.weight"]["lr"] == pytest.approx(0.1 * 0.5**4)
    assert groups["blocks.1.1.weight"]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert groups["norm.weight"]["lr"] == pytest.approx(0.1)
    assert groups["head.weight"]["lr"] == pytest.approx(0.1 * 10.0)
    # every trainable parameter is in exactly one group
    names = [n for g in param_groups(model, 0.1, 0.0, layer_decay=0.5) for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())


def test_frozen_params_are_left_out_and_optimizers_build():
    model = ToyViT()
    model.patch_embed.requires_grad_(False)
    cfg = apply_overrides(Config(), ["optim.name=adamw", "optim.lr=0.001", "optim.layer_decay=0.75"])
    opt = build_optimizer(model, cfg.optim)
    assert isinstance(opt, torch.optim.AdamW)
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.patch_embed.weight) not in params
    assert len(params) == sum(p.requires_grad for p in model.parameters())
    sgd = build_optimizer(model, apply_overrides(Config(), ["optim.nesterov=true"]).optim)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]


def _reference_cosine(step, total, warmup, start, floor):
    if step < warmup:
        return start + (1 - start) * step / warmup
    t = (step - warmup) / (total - warmup)
    return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2


def test_warmup_cosine_values():
    total, spe = 100, 10.0
    for step in (0, 5, 10, 11, 50, 99, 100):
        got = lr_factor(
            step,
            total_steps=total,
            steps_per_epoch=spe,
            warmup_epochs=1.0,
            warmup_start_factor=0.1,
            min_lr_ratio=0.01,
        )
        assert got == pytest.approx(_reference_cosine(step, total, 10, 0.1, 0.01))


def test_step_schedule_and_scheduler_drives_group_lrs():
    model = ToyViT()
    cfg = apply_overrides(
        Config(),
        [
            "schedule.name=step",
            "schedule.milestones=[2,4]",
            "schedule.gamma=0.1",
            "optim.lr=1.0",
            "optim.head_lr_mult=2.0",
        ],
    )
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.schedule, total_steps=60, steps_per_epoch=10)
    seen = []
    for _ in range(60):
        seen.append(sorted({round(g["lr"], 6) for g in opt.param_groups}))
        opt.step()
        sched.step()
    assert seen[0] == [1.0, 2.0] and seen[19] == [1.0, 2.0]
    assert seen[20] == [0.1, 0.2] and seen[40] == [0.01, 0.02]
    # the scheduler state is plain data (loads with weights_only)
    state = sched.state_dict()
    torch.save(state, "/dev/null")

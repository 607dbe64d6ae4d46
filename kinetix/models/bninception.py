"""BN-Inception (Ioffe & Szegedy, "Batch Normalization", ICML 2015), the TSN/TSM/GSM backbone, in the
official (Caffe-converted, yaml-built) layout: flat module ids such as ``conv1_7x7_s2``,
``inception_3a_1x1`` / ``inception_3a_1x1_bn``, convolutions with bias, ``fc`` classifier, and GSM
modules named ``gsm_<conv id>`` — so the official TSN/GSM checkpoints' keys map one to one.

Input ``(B*T, 3, 224, 224)`` in **BGR, 0..255, mean (104, 117, 128), std 1**;
:meth:`BNInception.forward_features` returns ``(B*T, 1024, 7, 7)``.

Temporal layers (chosen at build time): ``temporal="gsm"`` puts a Gate-Shift module after the first
conv of the 1x1 branch of every inception block (``3x3_reduce`` in 3c and 4e, which have no 1x1
branch), before its BN — the 10 official positions; ``temporal="shift"`` puts a TSM shift at the
input of every stage but the stem (``conv2`` stage and 3a ... 5b), the official mask with the
in-place (``block``) placement. The official ``blockres`` variant, ``relu(x + stage(shift(x)))``,
fails on the stages that change channels or resolution (block_2, 3a-3c, 4c, 4e, 5a), so it is
not offered.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.layers.temporal import GateShift, TemporalShift

# block id: (input channels, 1x1, (3x3 reduce, 3x3), (double reduce, double 3x3), pool kind, pool proj)
# 1x1 == 0: no 1x1 branch; the 3x3 and double-3x3 branches have stride 2 and the pool is a
# stride-2 max pool without projection (pass-through).
_BLOCKS = {
    "3a": (192, 64, (64, 64), (64, 96), "avg", 32),
    "3b": (256, 64, (64, 96), (64, 96), "avg", 64),
    "3c": (320, 0, (128, 160), (64, 96), "max", 0),
    "4a": (576, 224, (64, 96), (96, 128), "avg", 128),
    "4b": (576, 192, (96, 128), (96, 128), "avg", 128),
    "4c": (576, 160, (128, 160), (128, 160), "avg", 128),
    "4d": (608, 96, (128, 192), (160, 192), "avg", 128),
    "4e": (608, 0, (128, 192), (192, 256), "max", 0),
    "5a": (1056, 352, (192, 320), (160, 224), "avg", 128),
    "5b": (1024, 352, (192, 320), (192, 224), "max", 128),
}


class BNInception(nn.Module):
    """BN-Inception with optional temporal layers (``None``, ``"gsm"`` or ``"shift"``)."""

    def __init__(
        self,
        num_classes: int = 1000,
        num_frames: int = 8,
        temporal: str | None = None,
        shift_div: int = 8,
        causal: bool = False,
    ):
        super().__init__()
        if temporal not in (None, "gsm", "shift"):
            raise ValueError(f"temporal must be None, 'gsm' or 'shift', got {temporal!r}")
        self.num_frames, self.num_features = num_frames, 1024
        self.relu = nn.ReLU(inplace=True)
        gsm = temporal == "gsm"

        def conv(name, cin, cout, k=1, s=1, p=0, gate=False):
            """conv (with bias) [-> GSM] -> BN -> ReLU, registered under the official ids."""
            self.add_module(name, nn.Conv2d(cin, cout, k, s, p))
            mods = [getattr(self, name)]
            if gate:
                self.add_module(f"gsm_{name}", GateShift(cout, num_frames, causal=causal))
                mods.append(getattr(self, f"gsm_{name}"))
            self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))
            return [*mods, getattr(self, f"{name}_bn"), self.relu]

        self._stem = [
            *conv("conv1_7x7_s2", 3, 64, 7, 2, 3),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        stages = [
            *conv("conv2_3x3_reduce", 64, 64),
            *conv("conv2_3x3", 64, 192, 3, 1, 1),
            nn.MaxPool2d(3, 2, ceil_mode=True),
        ]
        self._stages = [(stages,)]  # (branch, ...) per stage; a single branch is not concatenated
        for bid, (cin, c1, (r3, c3), (rd, cd), pool, proj) in _BLOCKS.items():
            p = f"inception_{bid}"
            s = 1 if c1 else 2
            branches = []
            if c1:
                branches.append(conv(f"{p}_1x1", cin, c1, gate=gsm))
            branches.append(
                conv(f"{p}_3x3_reduce", cin, r3, gate=gsm and not c1) + conv(f"{p}_3x3", r3, c3, 3, s, 1)
            )
            branches.append(
                conv(f"{p}_double_3x3_reduce", cin, rd)
                + conv(f"{p}_double_3x3_1", rd, cd, 3, 1, 1)
                + conv(f"{p}_double_3x3_2", cd, cd, 3, s, 1)
            )
            if not c1:
                pool_op = nn.MaxPool2d(3, 2, ceil_mode=True)
            elif pool == "max":
                pool_op = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
            else:
                pool_op = nn.AvgPool2d(3, 1, 1, ceil_mode=True)
            branches.append([pool_op] + (conv(f"{p}_pool_proj", cin, proj) if proj else []))
            self._stages.append(tuple(branches))
        # TSM: one shift at the input of each stage after the stem (module ids shift_<stage>)
        self._shifts = [None] * len(self._stages)
        if temporal == "shift":
            for i, name in enumerate(["block_2"] + [f"inception_{b}" for b in _BLOCKS]):
                cin = 64 if i == 0 else _BLOCKS[name.removeprefix("inception_")][0]
                self.add_module(f"shift_{name}", TemporalShift(cin, num_frames, shift_div, causal=causal))
                self._shifts[i] = getattr(self, f"shift_{name}")
        self.fc = nn.Linear(1024, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _run(ops, x):
        for op in ops:
            x = op(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B*T, 3, 224, 224) -> (B*T, 1024, 7, 7)``."""
        x = self._run(self._stem, x)
        for shift, branches in zip(self._shifts, self._stages):
            if shift is not None:
                x = shift(x)
            x = (
                self._run(branches[0], x)
                if len(branches) == 1
                else torch.cat([self._run(b, x) for b in branches], 1)
            )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.forward_features(x), 1).flatten(1))


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: BNInception) -> dict[str, torch.Tensor]:
    """Caffe-converted BN-Inception files use the same ids; strip ``module.`` and squeeze
    BN tensors stored as ``(1, C)`` by some converters."""
    own = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        out[k] = v.reshape(own[k].shape) if k in own and v.numel() == own[k].numel() else v
    return out

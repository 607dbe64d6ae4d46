"""Temporal 2D-CNN costs on this machine, side by side in one process (medians of several runs).

1. TSM-R50 vs TSN-R50 at 8x224 (inference, batch 1): the shift should cost <= 3 %. A TSM with the
   naive full-tensor shifts (``torch.roll`` and the official ``zeros_like`` + slice copies) is shown
   for reference.
2. Online TSM: per-frame cost of ``StreamingRecognizer(tsm_r50_online)`` vs one TSN-R50 frame
   (target <= 1.05x).
3. GSM and SIFA overheads: gsm_bninception vs tsn_bninception, gsm_inceptionv3 vs tsn_inceptionv3
   (at 229), gsm_r50 / sifa_r50_plain vs tsn_r50.
4. Non-local: tsm_r50_nl vs tsm_r50 (GMACs ratio 1.87x), and one res3 non-local block (SDPA,
   scale 1) vs the official form (Conv3d projections, explicit ``softmax(theta^T phi)`` matmuls).

Usage: ``python benchmarks/temporal_cnn.py [--frames 8] [--size 224] [--repeats 5] [--threads N]``
(``--threads 1`` makes the CPU-time column a clean measure of work on a shared machine.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.layers.temporal import NonLocal3D
from kinetix.models import create_model
from kinetix.models.recognizer2d import StreamingRecognizer


class RollShift(nn.Module):
    """Naive TSM shift: ``torch.roll`` of the two folds + zeroing the wrapped frames (full copies)."""

    def __init__(self, channels, num_frames, fold_div=8):
        super().__init__()
        self.t, self.f = num_frames, channels // fold_div

    def forward(self, x):
        nt, c, h, w = x.shape
        x5 = x.view(nt // self.t, self.t, c, h, w)
        fut = torch.roll(x5, -1, 1)
        fut[:, -1] = 0
        past = torch.roll(x5, 1, 1)
        past[:, 0] = 0
        f = self.f
        return torch.cat([fut[:, :, :f], past[:, :, f : 2 * f], x5[:, :, 2 * f :]], 2).view(nt, c, h, w)


class ZerosShift(RollShift):
    """The official implementation: ``zeros_like`` of the full tensor, then three slice copies."""

    def forward(self, x):
        nt, c, h, w = x.shape
        x5, f = x.view(nt // self.t, self.t, c, h, w), self.f
        out = torch.zeros_like(x5)
        out[:, :-1, :f] = x5[:, 1:, :f]
        out[:, 1:, f : 2 * f] = x5[:, :-1, f : 2 * f]
        out[:, :, 2 * f :] = x5[:, :, 2 * f :]
        return out.view(nt, c, h, w)


def _naive_tsm(shift_cls, frames):
    from kinetix.models.recognizer2d import Recognizer2D
    from kinetix.models.resnet import resnet

    bb = resnet(50, num_classes=0, num_frames=frames, temporal=shift_cls)
    return Recognizer2D(bb, 400, frames)


def _official_non_local(m: NonLocal3D, x: torch.Tensor) -> torch.Tensor:
    """TSM's ops/non_local.py forward with ``m``'s weights: (N, C, T, H, W) Conv3d projections, a
    (1, 2, 2) max pool on phi/g, explicit ``softmax(theta^T phi) g`` matmuls."""
    nt, c, h, w = x.shape
    x5 = x.view(nt // m.num_frames, m.num_frames, c, h, w).transpose(1, 2)  # (N, C, T, H, W)
    n, ci = x5.shape[0], m.inter_channels
    g = F.max_pool3d(m.g(x5), (1, 2, 2)).view(n, ci, -1).transpose(1, 2)
    theta = m.theta(x5).view(n, ci, -1).transpose(1, 2)
    phi = F.max_pool3d(m.phi(x5), (1, 2, 2)).view(n, ci, -1)
    y = torch.matmul(F.softmax(torch.matmul(theta, phi), -1), g).transpose(1, 2).reshape(n, ci, *x5.shape[2:])
    z = m.W(y) + x5
    return z.transpose(1, 2).reshape(nt, c, h, w)


def _median_ms(fns: dict, repeats: int) -> dict:
    """Interleaved timing (one call of each per round, so load drifts hit all alike).

    Returns ``{name: (median wall ms, median cpu ms, min cpu ms)}``; the CPU time of this process
    is the steadier figure on a shared machine (others' load inflates wall time, not our CPU time;
    the minimum is the least disturbed run)."""
    times = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            times[k].append((time.perf_counter() - t, time.process_time() - c))
    return {
        k: (
            1e3 * statistics.median(w for w, _ in v),
            1e3 * statistics.median(c for _, c in v),
            1e3 * min(c for _, c in v),
        )
        for k, v in times.items()
    }


def _report(title, res, base):
    print(f"\n{title}")
    print(
        f"  {'':<36s} {'wall ms':>9s} {'ratio':>6s} {'cpu ms':>9s} {'ratio':>6s} {'min cpu':>9s} {'ratio':>6s}"
    )
    b = res[base]
    for k, r in res.items():
        print(f"  {k:<36s}" + "".join(f" {v:9.1f} {v / bv:6.3f}" for v, bv in zip(r, b)))


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    p.add_argument("--size", type=int, default=224, help="input height = width (default 224)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per model (median reported; default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["tsm", "stream", "gsm", "sifa", "nl"],
        help="sections to leave out",
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t, s = a.frames, a.size
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, input 1x3x{t}x{s}x{s}, median of {a.repeats}"
    )
    x = torch.randn(1, 3, t, s, s)
    models = {}

    def build(name, **kw):
        m = create_model(name, num_frames=t, **kw).eval()
        models[name] = m
        return m

    if "tsm" not in a.skip:
        tsn, tsm = build("tsn_r50"), build("tsm_r50")
        roll, zeros = _naive_tsm(RollShift, t).eval(), _naive_tsm(ZerosShift, t).eval()
        res = _median_ms(
            {"tsn_r50": lambda: tsn(x), "tsm_r50 (kinetix shift)": lambda: tsm(x),
             "tsm_r50 (official zeros_like shift)": lambda: zeros(x), "tsm_r50 (torch.roll shift)": lambda: roll(x)},
            a.repeats,
        )  # fmt: skip
        _report("TSM vs TSN (ResNet-50), target tsm <= x1.03", res, "tsn_r50")

    if "stream" not in a.skip:
        tsn = models.get("tsn_r50") or build("tsn_r50")
        online = StreamingRecognizer(build("tsm_r50_online"))
        frame = x[:, :, 0]

        def tsn_frame():
            return tsn.fc(tsn.backbone.forward_features(frame).mean((2, 3)))

        res = _median_ms({"tsn_r50 one frame": tsn_frame, "tsm_r50_online streaming step": lambda: online(frame)},
                         a.repeats * 2)  # fmt: skip
        _report("Online TSM per-frame cost, target <= x1.05", res, "tsn_r50 one frame")

    if "gsm" not in a.skip:
        tsn_bn, gsm_bn = build("tsn_bninception"), build("gsm_bninception")
        tsn = models.get("tsn_r50") or build("tsn_r50")
        gsm_r50 = build("gsm_r50")
        res = _median_ms(
            {"tsn_bninception": lambda: tsn_bn(x), "gsm_bninception": lambda: gsm_bn(x)}, a.repeats
        )
        _report("GSM overhead (BN-Inception, 10 modules)", res, "tsn_bninception")
        res = _median_ms({"tsn_r50": lambda: tsn(x), "gsm_r50": lambda: gsm_r50(x)}, a.repeats)
        _report("GSM overhead (ResNet-50, 16 modules)", res, "tsn_r50")
        tsn_v3, gsm_v3 = build("tsn_inceptionv3"), build("gsm_inceptionv3")
        x229 = torch.randn(1, 3, t, 229, 229)
        res = _median_ms({"tsn_inceptionv3": lambda: tsn_v3(x229), "gsm_inceptionv3": lambda: gsm_v3(x229)},
                         a.repeats)  # fmt: skip
        _report("GSM overhead (Inception-v3 at 229, 10 modules)", res, "tsn_inceptionv3")

    if "sifa" not in a.skip:
        tsn = models.get("tsn_r50") or build("tsn_r50")
        plain = build("sifa_r50_plain")
        res = _median_ms({"tsn_r50": lambda: tsn(x), "sifa_r50_plain": lambda: plain(x)}, a.repeats)
        _report("SIFA block overhead (ResNet-50, 6 SIFA blocks)", res, "tsn_r50")

    if "nl" not in a.skip:
        tsm = models.get("tsm_r50") or build("tsm_r50")
        tsm_nl = build("tsm_r50_nl")
        res = _median_ms({"tsm_r50": lambda: tsm(x), "tsm_r50_nl": lambda: tsm_nl(x)}, a.repeats)
        _report("Non-local overhead (5 blocks; GMACs ratio 1.87)", res, "tsm_r50")
        nl = tsm_nl.backbone.layer2[0].non_local
        torch.nn.init.normal_(nl.W[1].weight)  # not the identity
        feat = torch.randn(t, 512, s // 8, s // 8)  # res3 output of one clip
        torch.testing.assert_close(nl(feat), _official_non_local(nl, feat), rtol=1e-4, atol=1e-4)
        res = _median_ms({"official (explicit softmax)": lambda: _official_non_local(nl, feat),
                          "kinetix NonLocal3D (SDPA)": lambda: nl(feat)}, a.repeats * 2)  # fmt: skip
        _report("One res3 non-local block (same output)", res, "official (explicit softmax)")


if __name__ == "__main__":
    main()

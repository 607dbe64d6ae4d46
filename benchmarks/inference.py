"""CPU inference: eager PyTorch vs kinetix's inference path vs onnxruntime, side by side in one run.

For every model: the same weights (classifier re-initialised with std 0.02 so the logits are not
near-constant), one random clip, batch 1, fp32, ``--threads`` threads (default 2). Four paths:

* ``eager``    — the model under ``torch.inference_mode``;
* ``default``  — what ``kinetix test`` / ``predict`` run without ``--backend``:
  :func:`kinetix.utils.inference.fast_inference` (the faster of eager and oneDNN, measured; no export);
* ``kinetix``  — :func:`kinetix.deploy.optimize_for_inference` (``auto``: it times its candidates,
  onnxruntime included, on the first call and keeps the fastest; the choice is printed);
* ``onnxruntime`` — :func:`kinetix.deploy.export_onnx` (checked against eager) run by onnxruntime.

Runs are interleaved (eager, kinetix, ort, eager, ...) so that load on a shared machine hits all of
them alike; the table gives medians, the ratios of the medians, the max relative logit difference
to eager, and the achieved GFLOP/s (2 x counted GMACs / time) as a fraction of the machine's fp32
GEMM peak, measured here as the best run of the fastest of MKL (``F.linear``), oneDNN (prepacked
``mkldnn._linear_pointwise``) and onnxruntime's MatMul on a 1576x768x3072 product. A last column
times bf16 autocast (eager, and the default path, whose oneDNN copy runs bf16 GEMMs) against the
default fp32 path.

    python benchmarks/inference.py             # B-size models (several minutes on 2 cores)
    python benchmarks/inference.py --quick     # tiny test_* models of every family (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kinetix.deploy import OnnxRecognizer, export_onnx, optimize_for_inference
from kinetix.models import create_model
from kinetix.utils.flops import count_flops
from kinetix.utils.inference import fast_inference

# name, kwargs, frames, size
FULL = [
    ("timesformer_base", {}, 8, 224),
    ("vivit_base_m2", {}, 32, 224),
    ("videomae_base", {}, 16, 224),
    ("tsm_r50", {}, 8, 224),
]
QUICK = [
    ("test_tsn", {}, 8, 64),
    ("test_tsm", {}, 8, 64),
    ("test_gsm", {}, 8, 64),
    ("test_sifa", {}, 8, 64),
    ("test_swin", {}, 4, 64),
    ("test_timesformer", {}, 4, 32),
    ("test_vivit", {"model": 2}, 4, 32),
    ("test_videomae", {}, 4, 32),
]


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """One warm-up call each, then ``rounds`` rounds calling every fn once per round."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def gemm_peak(threads: int, rounds: int) -> dict[str, float]:
    """Best GFLOP/s of a 1576x768x3072 fp32 product through every GEMM available here."""
    m, k, n = 1576, 768, 3072
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    fns = {"mkl F.linear": lambda: F.linear(x, w, b)}
    if torch.backends.mkldnn.is_available():
        pw = torch.ops.mkldnn._reorder_linear_weight(w, m)
        fns["oneDNN packed"] = lambda: torch.ops.mkldnn._linear_pointwise(x, pw, b, "none", [], "")
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from kinetix.deploy import make_session

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "wt"], ["y0"]), helper.make_node("Add", ["y0", "b"], ["y"])],
            "gemm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
            [
                numpy_helper.from_array(w.T.contiguous().numpy(), "wt"),
                numpy_helper.from_array(b.numpy(), "b"),
            ],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        sess = make_session(proto.SerializeToString(), threads)
        xn = x.numpy()
        fns["onnxruntime MatMul"] = lambda: sess.run(None, {"x": xn})
        del onnx
    except ImportError:
        pass
    with torch.inference_mode():
        times = interleaved(fns, rounds)
    return {name: 2 * m * k * n / min(t) / 1e9 for name, t in times.items()}  # peak: the fastest run


def build(name: str, kwargs: dict, frames: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_frames=frames, **kwargs).eval()
    head = model.get_classifier()
    nn.init.normal_(head.weight, 0, 0.02)  # released heads are trained; a zero head gives constant logits
    return model


def bench_model(name, kwargs, frames, size, rounds, threads, peak, tmp: Path, bf16: bool) -> dict:
    model = build(name, kwargs, frames, size)
    x = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(1))
    gmacs = count_flops(model, (x,)).gmacs
    fast = optimize_for_inference(model)
    default = fast_inference(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        ref = model(x)
        out = fast(x)  # auto: measures its candidates on this first call
        choose_s = time.perf_counter() - t0
        out_default = default(x)
    chosen, chosen_default = ", ".join(fast.used()), ", ".join(default.used())  # fp32 (before bf16)
    export = export_onnx(model, tmp / f"{name}.onnx", num_frames=frames, input_size=size)
    ort = OnnxRecognizer(export.path, threads)
    scale = float(ref.abs().max())
    diffs = {
        "default": float((out_default - ref).abs().max()) / scale,
        "kinetix": float((out - ref).abs().max()) / scale,
        "onnxruntime": float(np.abs(ort(x) - ref.numpy()).max()) / scale,
    }
    fns = {
        "eager": lambda: model(x),
        "default": lambda: default(x),
        "kinetix": lambda: fast(x),
        "onnxruntime": lambda: ort(x),
    }
    with torch.inference_mode():
        times = interleaved(fns, rounds)
        bf16_t = None
        if bf16:

            def bf16(fn):
                def run():
                    with torch.autocast("cpu", torch.bfloat16):
                        fn(x)

                return run

            trio = interleaved(
                {"fp32": lambda: default(x), "bf16 eager": bf16(model), "bf16 default": bf16(default)}, rounds
            )
            fp32 = statistics.median(trio["fp32"])
            bf16_t = {k: fp32 / statistics.median(trio[k]) for k in ("bf16 eager", "bf16 default")}
    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()}
    return dict(
        name=f"{name}{''.join(f' {k}={v}' for k, v in kwargs.items())} {frames}x{size}",
        gmacs=gmacs,
        med=med,
        spread=spread,
        diffs=diffs,
        chosen=chosen,
        chosen_default=chosen_default,
        choose_s=choose_s,
        export_s=export.seconds,
        bf16_speedup=bf16_t,
        peak_frac={k: 2 * gmacs / v / max(peak.values()) for k, v in med.items()},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the tiny test_* models of every family")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 7)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    ap.add_argument("--models", nargs="+", help="only these model names")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast comparison")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (7 if args.quick else 5)
    models = QUICK if args.quick else FULL
    if args.models:
        models = [m for m in models if m[0] in args.models]
    peak = gemm_peak(args.threads, 9)
    print(f"fp32 GEMM 1576x768x3072, {args.threads} threads (GFLOP/s, best of 9 interleaved):")
    for k, v in peak.items():
        print(f"  {k:20s} {v:7.1f}")
    print(f"  peak = {max(peak.values()):.1f} GFLOP/s ({max(peak, key=peak.get)})\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw, t, s in models:
            r = bench_model(name, kw, t, s, rounds, args.threads, peak, Path(tmp), not args.no_bf16)
            rows.append(r)
            m = r["med"]
            print(
                f"{r['name']}: {r['gmacs']:.1f} GMACs; eager {m['eager']:.3f} s, default {m['default']:.3f} s "
                f"[{r['chosen_default']}], kinetix {m['kinetix']:.3f} s [{r['chosen']}], "
                f"onnxruntime {m['onnxruntime']:.3f} s; spread (max-min)/median "
                + ", ".join(f"{k} {v:.0%}" for k, v in r["spread"].items())
                + f"; auto choice {r['choose_s']:.1f} s, export {r['export_s']:.1f} s",
                flush=True,
            )
    print(
        "\n| model | GMACs | eager s | default s (backend) | optimize_for_inference s (backend) | "
        "onnxruntime s | default vs eager | default vs ORT | optimize vs ORT | "
        "max rel diff (default / optimize / ORT) | % of GEMM peak (eager / default / ORT) |"
        + (" bf16 autocast vs default fp32 (eager / default) |" if not args.no_bf16 else "")
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if not args.no_bf16 else ""))
    for r in rows:
        m, p, d = r["med"], r["peak_frac"], r["diffs"]
        line = (
            f"| {r['name']} | {r['gmacs']:.1f} | {m['eager']:.3f} | {m['default']:.3f} ({r['chosen_default']}) | "
            f"{m['kinetix']:.3f} ({r['chosen']}) | {m['onnxruntime']:.3f} | {m['eager'] / m['default']:.2f}x | "
            f"{m['onnxruntime'] / m['default']:.2f}x | {m['onnxruntime'] / m['kinetix']:.2f}x | "
            f"{d['default']:.1e} / {d['kinetix']:.1e} / {d['onnxruntime']:.1e} | "
            f"{100 * p['eager']:.0f} / {100 * p['default']:.0f} / {100 * p['onnxruntime']:.0f} |"
        )
        if r["bf16_speedup"] is not None:
            line += f" {r['bf16_speedup']['bf16 eager']:.2f}x / {r['bf16_speedup']['bf16 default']:.2f}x |"
        print(line)


if __name__ == "__main__":
    main()

"""Video transformers: kinetix vs Hugging Face transformers, side by side in one process.

Both libraries run the same weights (the HF model's random init, converted with the kinetix model
file's ``checkpoint_filter_fn``) on the same clip, batch 1, under ``torch.inference_mode``. Runs
are interleaved (HF, kinetix, HF, kinetix, ...) so that load on a shared machine hits both alike; we
report the median time of each and the median of the per-pair ratios.

1. peers, fp32: TimeSformer-B 8x224 (target >= 1.10x HF), ViViT-B/16x2 Model 1 32x224 (>= 1.05x),
   VideoMAE-B 16x224 (>= 1.0x); max |logits difference| as a check that both compute the same thing.
2. bf16 autocast vs fp32 on kinetix TimeSformer-B (target >= 1.6x).
3. GEMM efficiency: TimeSformer-B fp32 achieved GFLOP/s (2 x counted GMACs / time), eager and
   through kinetix's default inference path (``fast_inference``, what ``kinetix test``/``predict``
   run), against the fastest (1568 x 768) @ (768 x 3072) GEMM available, measured in the same run
   (on CPU the best of MKL ``F.linear`` and a prepacked oneDNN GEMM; target >= 90%); also against
   the MACs actually executed (under ``inference_mode`` ``temporal_fc`` runs composed with ``proj``).
4. Attention schemes as T grows (8, 16, 32 frames): divided / joint / axial / L+G, GMACs and time.

    python benchmarks/video_transformers.py            # full (slow on CPU: ~20-30 min on 2 cores)
    python benchmarks/video_transformers.py --quick    # fewer repeats, smaller ViViT clip, 112 px scaling table
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch
import transformers

from kinetix.models import create_model
from kinetix.models._builder import convert_state_dict, load_state_dict_strict
from kinetix.models._complexity import model_complexity
from kinetix.utils.flops import count_flops
from kinetix.utils.inference import fast_inference


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def interleaved(fns: dict, repeats: int, device) -> dict[str, list[float]]:
    """One warm-up call each, then ``repeats`` rounds calling every fn once per round."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_time(fn, device))
    return times


def _hf_pair(kind: str, num_frames: int, size: int, device):
    common = dict(image_size=size, num_frames=num_frames, num_labels=400)
    if kind == "timesformer":
        hf = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(**common))
        ours = create_model("timesformer_base", num_frames=num_frames, input_size=size)
    elif kind == "vivit":
        hf = transformers.VivitForVideoClassification(transformers.VivitConfig(**common))
        ours = create_model("vivit_base_m1", num_frames=num_frames, input_size=size)
    else:
        hf = transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(layer_norm_eps=1e-6, **common)
        )
        ours = create_model("videomae_base", num_frames=num_frames, input_size=size)
    load_state_dict_strict(ours, convert_state_dict(ours, hf.state_dict()))
    return hf.eval().to(device), ours.eval().to(device)


def peers(args, device) -> None:
    vivit_t = 16 if args.quick else 32
    rows = [("TimeSformer-B", "timesformer", 8, 224, 1.10), ("ViViT-B M1", "vivit", vivit_t, 224, 1.05),
            ("VideoMAE-B", "videomae", 16, 224, 1.0)]  # fmt: skip
    print(f"\n## 1. kinetix vs HF transformers {transformers.__version__}, fp32, batch 1 ({device})")
    print("| model | clip | GMACs | HF s | kinetix s | speed-up | target | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for name, kind, t, size, target in rows:
        hf, ours = _hf_pair(kind, t, size, device)
        x = torch.randn(1, 3, t, size, size, device=device)
        with torch.inference_mode():
            diff = (hf(pixel_values=x.transpose(1, 2)).logits - ours(x)).abs().max().item()
            times = interleaved(
                {"hf": partial(hf, pixel_values=x.transpose(1, 2)), "kx": partial(ours, x)},
                args.repeats,
                device,
            )
        ratio = statistics.median(a / b for a, b in zip(times["hf"], times["kx"], strict=True))
        gmacs = model_complexity(ours.model_name, num_frames=t, input_size=size).gmacs  # meta device
        print(f"| {name} | {t}x{size} | {gmacs:.0f} | {statistics.median(times['hf']):.3f} | "
              f"{statistics.median(times['kx']):.3f} | {ratio:.2f}x | {target:.2f}x | {diff:.1e} |")  # fmt: skip


def bf16_and_gemm(args, device) -> None:
    model = create_model("timesformer_base").eval().to(device)
    model_bf16 = create_model("timesformer_base").eval().to(device, torch.bfloat16)
    model_bf16.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 8, 224, 224, device=device)
    gmacs = model_complexity("timesformer_base").gmacs
    a = torch.randn(1568, 768, device=device)
    w = torch.randn(3072, 768, device=device)
    fast = fast_inference(model)
    onednn = device.type == "cpu" and torch.backends.mkldnn.is_available()
    packed = torch.ops.mkldnn._reorder_linear_weight(w, 1568) if onednn else None

    def gemm():
        for _ in range(10):
            torch.nn.functional.linear(a, w)

    def gemm_onednn():
        for _ in range(10):
            torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")

    def autocast():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model(x)

    with torch.inference_mode():
        fast(x)  # chooses its path on the first call
        fns = {
            "fp32": partial(model, x),
            "default": partial(fast, x),
            "gemm": gemm,
            **({"gemm onednn": gemm_onednn} if onednn else {}),
            "autocast": autocast,
            "bf16": partial(model_bf16, x.bfloat16()),
        }
        times = interleaved(fns, args.repeats, device)
        err = (autocast().float() - model(x)).abs().max().item()
        executed = count_flops(model, x).gmacs  # *_fc composed with proj under inference_mode
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(a / b for a, b in zip(times["fp32"], times[k], strict=True)) for k in times}
    print(f"\n## 2. bf16 vs fp32 (kinetix TimeSformer-B 8x224, {device})")
    print(
        f"fp32 {med['fp32']:.3f} s; bf16 autocast {med['autocast']:.3f} s: {ratio['autocast']:.2f}x (target 1.6x), "
        f"max |logit diff| {err:.3f}; bf16 weights (model.bfloat16()) {med['bf16']:.3f} s: {ratio['bf16']:.2f}x"
    )
    gemms = {k: 10 * 2 * 1568 * 768 * 3072 / min(times[k]) / 1e9 for k in times if k.startswith("gemm")}
    gemm_flops = max(gemms.values())  # the machine's GEMM peak: the fastest GEMM, best run
    print("\n## 3. GEMM efficiency (TimeSformer-B 8x224, fp32)")
    print("GEMM 1568x768x3072: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in gemms.items()))
    for k in ("fp32", "default"):
        achieved, done = 2 * gmacs / med[k], 2 * executed / med[k]
        print(f"{'eager' if k == 'fp32' else 'default inference path (' + ', '.join(fast.used()) + ')'}: "
              f"{gmacs:.1f} GMACs in {med[k]:.3f} s = {achieved:.1f} GFLOP/s, {100 * achieved / gemm_flops:.0f}% "
              f"of the GEMM peak (target 90%); counting only the {executed:.1f} GMACs executed "
              f"(temporal_fc composed with proj): {100 * done / gemm_flops:.0f}%")  # fmt: skip


def schemes(args, device) -> None:
    size = 112 if args.quick else 224
    print(f"\n## 4. attention schemes as the clip grows (TimeSformer-B, {size}x{size}, fp32, {device})")
    print("| scheme | " + " | ".join(f"T={t} GMACs | T={t} s" for t in (8, 16, 32)) + " |")
    print("|---|" + "---|---|" * 3)
    for scheme in ("divided", "joint", "axial", "local_global"):
        cells = []
        for t in (8, 16, 32):
            gmacs = model_complexity(
                "timesformer_base", num_frames=t, input_size=size, attention=scheme
            ).gmacs
            model = create_model("timesformer_base", attention=scheme, num_frames=t, input_size=size)
            model = model.eval().to(device)
            x = torch.randn(1, 3, t, size, size, device=device)
            with torch.inference_mode():
                s = statistics.median(
                    interleaved({"m": partial(model, x)}, max(1, args.repeats // 2), device)["m"]
                )
            cells.append(f"{gmacs:.0f} | {s:.2f}")
        print(f"| {scheme} | " + " | ".join(cells) + " |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller ViViT clip and scaling table")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed rounds per measurement (default 7; quick 3)"
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--only", default="1234", help="sections to run, by number (1-4 above), e.g. 13 (default: 1234)"
    )
    args = p.parse_args(argv)
    args.repeats = args.repeats or (3 if args.quick else 7)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"# video transformers benchmark: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"repeats {args.repeats}{', quick' if args.quick else ''}")  # fmt: skip
    for key, fn in (("1", peers), ("2", bf16_and_gemm), ("4", schemes)):
        if key in args.only or (key == "2" and "3" in args.only):
            fn(args, device)


if __name__ == "__main__":
    main()

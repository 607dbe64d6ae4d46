"""Every registered model's converter, fed a checkpoint it cannot take — another family's weights,
an empty or truncated file, a tensor of the wrong shape (kinetix and foreign layouts), an image-ViT
``vit_jax`` ``.npz`` — fails with a :class:`CheckpointError` that names the file, the model, what the
model reads and the fix: through ``kinetix convert`` (exit 2, one line on stderr, no traceback) and
through the library (``convert_checkpoint``, ``create_model(checkpoint=...)``)."""

import contextlib
import io
import re

import numpy as np
import pytest
import torch
from test_cnn_converters import _official_tsm  # synthetic official layouts of the converter tests
from test_vivit import _flatten, _scenic_tree

from kinetix.cli.main import main as cli_main
from kinetix.errors import CheckpointError
from kinetix.models import convert_checkpoint, create_model, list_models, save_model_weights
from kinetix.models._registry import _REGISTRY
from kinetix.utils.state_dict import read_state_dict, save_safetensors

# the tiny variant of every family (any new ``test_*`` model is picked up), ViViT Models 2-4 too
TINY = [(n, {}) for n in list_models("test_*") if _REGISTRY[n].module.startswith("kinetix.")] + [
    ("test_vivit", {"model": m}) for m in (2, 3, 4)
]
# full-size names of converter layouts no tiny variant has (BN-Inception backbone, SIFA-R50 plain)
FULL = [("tsn_bninception", {}), ("sifa_r50_plain", {})]
# another family's weights for each converter file
DONOR = {"recognizer2d": "test_vivit", "sifa_net": "test_timesformer", "swin": "test_tsm",
         "timesformer": "test_swin", "videomae": "test_tsn_inceptionv3", "vivit": "test_sifa",
         "evad": "test_gsm"}  # fmt: skip
FIX = re.compile(r"\b(Check|Use|Pick|Start|re-download|re-save|load it with)\b")


def _family(name: str) -> str:
    return _REGISTRY[name].module.rsplit(".", 1)[1]


def _id(case) -> str:
    name, kw = case
    return name + "".join(f"-{k}{v}" for k, v in kw.items())


def test_every_converter_file_is_covered():
    """A family added without a tiny variant or a donor fails here, not silently untested."""
    covered = {_family(n) for n, _ in TINY + FULL}
    ours = [n for n in list_models() if _REGISTRY[n].module.startswith("kinetix.")]  # (tests add some)
    assert {_family(n) for n in ours} <= covered <= set(DONOR)


def _cli(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main([str(a) for a in argv])
    return rc, err.getvalue()


def _refusals(name, kw, src, tmp_path, *, create=True) -> list[str]:
    """The messages of ``kinetix convert``, ``convert_checkpoint`` and ``create_model(checkpoint=)``
    on ``src``; each must be a clean refusal that writes nothing."""
    out = tmp_path / "out.safetensors"
    messages = []
    if not kw:  # the CLI has no --model-number: ViViT Models 2-4 go through the library only
        rc, err = _cli(["convert", "--model", name, "--src", src, "--out", out])
        assert rc == 2 and "Traceback" not in err and err.count("\n") == 1, err
        assert err.startswith("kinetix convert: error: "), err
        messages.append(err)
    with pytest.raises(CheckpointError) as e:
        convert_checkpoint(create_model(name, **kw), src, out)
    messages.append(str(e.value))
    if create:
        with pytest.raises(CheckpointError) as e:
            create_model(name, checkpoint=str(src), **kw)
        messages.append(str(e.value))
    assert not out.exists()
    return messages


def _assert_actionable(msg, src, name):
    assert str(src) in msg and name in msg, msg  # the file and the model
    assert FIX.search(msg), msg  # what to do


def _widened(sd, key):
    return {**sd, key: torch.zeros([s + 1 for s in sd[key].shape])}


def _inner_key(sd, like=r"weight$"):
    """A weight in the middle of the network (not the classifier: its shape may legally differ)."""
    keys = [
        k for k, v in sd.items() if re.search(like, k) and v.ndim >= 2 and not k.startswith(("fc", "head"))
    ]
    return keys[len(keys) // 2]


@pytest.mark.parametrize("case", TINY + [pytest.param(c, marks=pytest.mark.slow) for c in FULL], ids=_id)
def test_wrong_checkpoints_are_refused_with_an_actionable_message(case, tmp_path, one_thread):
    name, kw = case
    model = create_model(name, **kw)
    own = model.state_dict()
    donor = create_model(DONOR[_family(name)]).state_dict()

    other = tmp_path / "other-family.pth"  # another family's weights
    torch.save({"state_dict": donor}, other)
    for msg in _refusals(name, kw, other, tmp_path):
        _assert_actionable(msg, other, name)
        assert "reads" in msg or "Expected" in msg, msg  # the layouts the model's converter reads
        assert any(k in msg for k in own), msg  # keys of both sides (the file's maybe without a prefix)
        assert any(k in msg or k.split(".", 1)[1] in msg for k in donor), msg

    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    no_weights = tmp_path / "no-weights.pth"
    torch.save({"epoch": 3, "state_dict": {}}, no_weights)
    truncated = tmp_path / "truncated.pth"
    torch.save(own, truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    for src, what in ((empty, "empty"), (no_weights, "found no weights"), (truncated, "not a readable")):
        for msg in _refusals(name, kw, src, tmp_path):
            assert str(src) in msg and what in msg and FIX.search(msg), msg

    # kinetix weights that stop early (EVAD's loader fills absent keys on purpose: a VideoMAE
    # backbone initialises the detector, so only the conversion, which checks completeness, refuses)
    cut = tmp_path / "cut.safetensors"
    keys = list(own)
    save_safetensors({k: own[k] for k in keys[: len(keys) * 2 // 3]}, cut, {"kinetix_model": name})
    for msg in _refusals(name, kw, cut, tmp_path, create=_family(name) != "evad"):
        _assert_actionable(msg, cut, name)
        assert any(k in msg for k in keys[len(keys) * 2 // 3 :]), msg  # names what is missing

    key = _inner_key(own)  # kinetix names, one tensor of another shape
    shape = tmp_path / "shape.safetensors"
    save_safetensors(_widened(own, key), shape)
    for msg in _refusals(name, kw, shape, tmp_path):
        _assert_actionable(msg, shape, name)
        assert key in msg and str(tuple(own[key].shape)) in msg, msg

    jax = tmp_path / "ViT-B_16.npz"  # an image ViT in the original JAX names
    np.savez(jax, **_vit_jax())
    for msg in _refusals(name, kw, jax, tmp_path):
        _assert_actionable(msg, jax, name)
        if _family(name) == "vivit":
            assert "image ViT" in msg and "init_from_image_vit" in msg, msg


def _vit_jax(D=32, heads=2, mlp=128, depth=2, classes=10) -> dict[str, np.ndarray]:
    """An image ViT tree as ``vit_jax`` saves it (``ViT-B_16.npz``: blocks ``LayerNorm_0``,
    ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3``; an image ``head``)."""
    r = np.random.default_rng(0)

    def t(*shape):
        return r.standard_normal(shape).astype(np.float32) * 0.02

    tree = {"cls": t(1, 1, D), "embedding/kernel": t(8, 8, 3, D), "embedding/bias": t(D),
            "Transformer/posembed_input/pos_embedding": t(1, 17, D),
            "Transformer/encoder_norm/scale": t(D), "Transformer/encoder_norm/bias": t(D),
            "head/kernel": t(D, classes), "head/bias": t(classes)}  # fmt: skip
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            tree |= {b + ln + "/scale": t(D), b + ln + "/bias": t(D)}
        for p in ("query", "key", "value"):
            tree |= {f"{b}MultiHeadDotProductAttention_1/{p}/kernel": t(D, heads, D // heads),
                     f"{b}MultiHeadDotProductAttention_1/{p}/bias": t(heads, D // heads)}  # fmt: skip
        tree |= {f"{b}MultiHeadDotProductAttention_1/out/kernel": t(heads, D // heads, D),
                 f"{b}MultiHeadDotProductAttention_1/out/bias": t(D),
                 f"{b}MlpBlock_3/Dense_0/kernel": t(D, mlp), f"{b}MlpBlock_3/Dense_0/bias": t(mlp),
                 f"{b}MlpBlock_3/Dense_1/kernel": t(mlp, D), f"{b}MlpBlock_3/Dense_1/bias": t(D)}  # fmt: skip
    return tree


# ---- foreign layouts with a tensor of the wrong shape, and scenic trees of another ViViT Model -----
def _scenic(model_no):
    return _flatten(_scenic_tree(model_no))


def _foreign(name, model) -> tuple[dict, str]:
    """``model``'s weights in a foreign layout its converter reads, one tensor widened: (dict, key)."""
    sd = model.state_dict()
    family = _family(name)
    if family == "vivit":
        tree = _scenic(model.model)
        key = "optimizer/target/" + ("SpatialTransformer" if model.model == 2 else "Transformer")
        key += "/encoderblock_0/" + (
            "MultiHeadDotProductAttention_space" if model.model == 3 else "MultiHeadDotProductAttention_0"
        )
        key += "/query/kernel"  # (D, H, hd)
        return {k: torch.from_numpy(v) for k, v in tree.items()} | {key: torch.zeros(32, 2, 17)}, key
    if family == "recognizer2d" and hasattr(model.backbone, "layer1"):
        foreign = _official_tsm(model)  # module.base_model.*, .net, new_fc
    elif family in ("recognizer2d", "sifa_net"):  # 2D ImageNet weights of the backbone
        backbone = getattr(model, "backbone", model)
        foreign = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc")}
    elif family == "swin":  # timm: head.fc
        foreign = {re.sub(r"^head\.", "head.fc.", k): v for k, v in sd.items()}
    elif family == "timesformer":  # official .pyth: model.*
        foreign = {"model." + k: v for k, v in sd.items()}
    elif family == "videomae":  # the encoder of a pre-training checkpoint
        foreign = {"encoder." + k: v for k, v in sd.items() if not k.startswith(("head", "fc_norm"))}
    else:  # EVAD, official names
        foreign = {re.sub(r"^fpn\.|^sparse_rcnn\.(?=init_proposal_)", "", k).replace(
            "sparse_rcnn.head_series.", "det_head.s0_headseries."): v for k, v in sd.items()}  # fmt: skip
    key = _inner_key(foreign)
    return _widened(foreign, key), key


@pytest.mark.parametrize("case", TINY, ids=_id)
def test_foreign_layout_with_a_wrong_shape_is_refused(case, tmp_path, one_thread):
    name, kw = case
    model = create_model(name, **kw)
    sd, key = _foreign(name, model)
    src = tmp_path / "foreign.pth"
    torch.save(sd, src)
    for msg in _refusals(name, kw, src, tmp_path):
        _assert_actionable(msg, src, name)
        assert "shape" in msg, msg
        if _family(name) == "vivit":  # the scenic converter names the tensor in the file's names
            assert (
                f"{key.removeprefix('optimizer/target/')} (32, 2, 17): does not fit a ViViT of width 32"
                in msg
            ), msg


@pytest.mark.parametrize(
    ("given", "model_no"), [(g, m) for g in (1, 2, 3, 4) for m in (1, 2, 3, 4) if g != m]
)
def test_scenic_checkpoint_of_another_vivit_model_names_the_model_it_is(given, model_no, tmp_path):
    src = tmp_path / f"vivit_m{given}.npz"
    np.savez(src, **_scenic(given))
    for msg in _refusals("test_vivit", {"model": model_no}, src, tmp_path):
        _assert_actionable(msg, src, "test_vivit")
        assert f"a scenic ViViT Model {given}" in msg and f"model is ViViT Model {model_no}" in msg, msg
        assert f"vivit_base_m{given}" in msg, msg


def test_timesformer_names_a_pos_embed_of_another_token_layout(tmp_path):
    """ViViT Model 1 weights share TimeSformer's names, but their pos_embed spans all frames."""
    src = tmp_path / "vivit.pth"
    torch.save(create_model("test_vivit").state_dict(), src)
    for msg in _refusals("test_timesformer", {}, src, tmp_path):
        _assert_actionable(msg, src, "test_timesformer")
        assert "pos_embed (1, 33, 32): 32 patch positions are no square grid" in msg, msg


def test_kinetix_weights_of_another_model_name_that_model(tmp_path):
    src = save_model_weights(create_model("test_tsn"), tmp_path / "tsn.safetensors")
    for msg in _refusals("test_vivit", {}, src, tmp_path):
        _assert_actionable(msg, src, "test_vivit")
        assert "saved for model 'test_tsn': load it with that model" in msg, msg
    own = save_model_weights(create_model("test_tsn"), tmp_path / "own.safetensors")
    cut = tmp_path / "cut.safetensors"  # its own model's weights, cut short: no such hint
    save_safetensors(dict(list(read_state_dict(own).items())[:10]), cut, {"kinetix_model": "test_tsn"})
    for msg in _refusals("test_tsn", {}, cut, tmp_path):
        assert "missing keys" in msg and "saved for model" not in msg, msg

"""Online TSM / causal GSM: frame-by-frame streaming equals the causal model run on the clip."""

import pytest
import torch

from kinetix.models import create_model
from kinetix.models.recognizer2d import StreamingRecognizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest


def _calibrate_bn(model, clip):
    """BN statistics from the clip itself (cumulative average), so that signals propagate through
    deep randomly initialised nets in eval mode and the comparisons below are not trivial."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            m.weight.data.uniform_(0.5, 1.5)
    model.train()
    with torch.no_grad():
        model(clip)
    return model.eval()


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("test_tsm_online", {}),
        ("test_gsm", {"causal": True}),
        ("gsm_bninception", {"causal": True, "num_classes": 5}),  # full width, tiny input
        ("tsm_bninception", {"causal": True, "num_classes": 5}),  # in-place (block) shift
    ],
)
def test_streaming_equals_causal_clip(name, kwargs):
    model = create_model(name, **kwargs)
    for m in model.modules():  # make the GSM gates non-trivial
        if hasattr(m, "conv3D"):
            torch.nn.init.normal_(m.conv3D.weight, std=0.2)
    clip = torch.randn(2, 3, 8, 32, 32)
    _calibrate_bn(model, clip)
    with torch.no_grad():
        expected = model.forward_frames(clip)  # (B, T, K): each frame's logits before consensus
    stream = StreamingRecognizer(model)
    for _ in range(2):  # the second pass checks reset()
        stream.reset()
        got = torch.stack([stream(clip[:, :, t]) for t in range(8)], 1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the model still works offline after streaming, and the past matters
    torch.testing.assert_close(model.forward_frames(clip), expected, rtol=1e-5, atol=1e-5)
    stream.reset()
    stream(clip[:, :, 0] + 1)
    changed = stream(clip[:, :, 1])
    assert (changed - expected[:, 1]).abs().max() > 1e-3 * expected[:, 1].abs().max()


def test_streaming_batches_are_independent():
    model = create_model("test_tsm_online", num_frames=4)
    clip = torch.randn(3, 3, 4, 32, 32)
    _calibrate_bn(model, clip)
    stream = StreamingRecognizer(model)
    together = torch.stack([stream(clip[:, :, t]) for t in range(4)], 1)
    stream.reset()
    alone = torch.stack([stream(clip[1:2, :, t]) for t in range(4)], 1)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-5, atol=1e-5)


def test_streaming_rejects_offline_models():
    with pytest.raises(ValueError, match="causal"):
        StreamingRecognizer(create_model("test_tsm"))
    with pytest.raises(ValueError, match="causal"):
        StreamingRecognizer(create_model("test_gsm"))

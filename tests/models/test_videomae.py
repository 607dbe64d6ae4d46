import pytest
import torch

from kinetix.layers.pos_embed import sinusoid_table
from kinetix.models import create_model
from kinetix.models._builder import convert_state_dict
from kinetix.models._complexity import model_complexity


@pytest.mark.parametrize(
    ("name", "mparams", "gflops"), [("videomae_base", 87.0, 180.0), ("videomae_large", 305.0, 597.0)]
)
def test_params_and_gmacs_match_paper(name, mparams, gflops):
    r = model_complexity(name)  # VideoMAE paper Table: ViT-B 87M / 180G, ViT-L 305M / 597G per view
    assert abs(r.mparams - mparams) / mparams < 0.01 and abs(r.gmacs - gflops) / gflops < 0.01


def test_encoder_api_for_detection_backbones():
    m = create_model("test_videomae").eval()
    assert "pos_embed" not in m.state_dict()  # fixed table, not a weight
    torch.testing.assert_close(m.pos_embed, sinusoid_table(2 * 4 * 4, 32))
    x = torch.randn(2, 3, 4, 32, 32)
    tokens, grid = m.forward_tokens(x)
    assert grid == (2, 4, 4) and tokens.shape == (2, 32, 32)
    torch.testing.assert_close(m(x), m.head(m.fc_norm(tokens.mean(1))))
    assert m.blocks[0].attn.q_bias is not None and m.blocks[0].attn.qkv.bias is None
    y = m(torch.randn(1, 3, 8, 48, 40))  # other clip: the sinusoid table is resized to the grid
    assert y.shape == (1, 5) and torch.isfinite(y).all()
    assert m.pos_embed_for((4, 6, 5)).shape == (1, 120, 32)


def test_official_checkpoints_convert():
    src = create_model("test_videomae")
    # fine-tuned official checkpoints: same names as kinetix, under 'module'
    torch.testing.assert_close(convert_state_dict(src, {f"module.{k}": v for k, v in src.state_dict().items()}),
                               src.state_dict())  # fmt: skip
    # pre-training checkpoints: 'encoder.' prefix plus decoder weights, which are dropped
    pre = {f"encoder.{k}": v for k, v in src.state_dict().items() if not k.startswith(("head", "fc_norm"))}
    pre |= {"decoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "mask_token": torch.zeros(1, 1, 8),
            "encoder_to_decoder.weight": torch.zeros(8, 32)}  # fmt: skip
    out = convert_state_dict(src, pre)
    assert set(out) == {k for k in src.state_dict() if not k.startswith(("head", "fc_norm"))}

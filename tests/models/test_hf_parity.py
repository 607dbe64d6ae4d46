"""Parity with Hugging Face transformers: build the HF model from a tiny random config, convert its
state dict with the model file's ``checkpoint_filter_fn``, run both on the same clip."""

import pytest
import torch

from kinetix.models import create_model
from kinetix.models._builder import convert_state_dict, load_state_dict_strict

transformers = pytest.importorskip("transformers")

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=5)


def _compare(hf, ours, clip, logits_hf, features_hf=None):
    load_state_dict_strict(ours, convert_state_dict(ours, hf.state_dict()))
    ours.eval()
    with torch.no_grad():
        out = ours(clip)
        if features_hf is not None:
            assert (ours.forward_features(clip) - features_hf).abs().max().item() <= 1e-4
    assert logits_hf.std() > 0.05  # a live comparison, not two constant outputs
    assert (out - logits_hf).abs().max().item() <= 1e-4


@pytest.mark.parametrize(
    ("attention", "hf_type"), [("divided", "divided_space_time"), ("joint", "joint_space_time")]
)
def test_timesformer_matches_hf(randomize, attention, hf_type):
    cfg = transformers.TimesformerConfig(
        image_size=32, patch_size=8, num_frames=4, attention_type=hf_type, layer_norm_eps=1e-6, **TINY
    )
    hf = randomize(transformers.TimesformerForVideoClassification(cfg))
    clip = torch.randn(2, 3, 4, 32, 32)  # (B, C, T, H, W); HF takes (B, T, C, H, W)
    with torch.no_grad():
        ref = hf(pixel_values=clip.transpose(1, 2)).logits
        feats = hf.timesformer(pixel_values=clip.transpose(1, 2)).last_hidden_state
    ours = create_model(
        "test_timesformer", attention=attention, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
    )
    _compare(hf, ours, clip, ref, feats)


def test_vivit_model1_matches_hf(randomize):
    cfg = transformers.VivitConfig(image_size=32, num_frames=4, tubelet_size=[2, 8, 8], **TINY)
    hf = randomize(transformers.VivitForVideoClassification(cfg))
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=clip.transpose(1, 2)).logits
        feats = hf.vivit(pixel_values=clip.transpose(1, 2)).last_hidden_state
    ours = create_model("test_vivit", model=1, mlp_ratio=2.0)
    _compare(hf, ours, clip, ref, feats)


def test_videomae_matches_hf(randomize):
    cfg = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, layer_norm_eps=1e-6, **TINY
    )
    hf = randomize(transformers.VideoMAEForVideoClassification(cfg))
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=clip.transpose(1, 2)).logits
        feats = hf.videomae(pixel_values=clip.transpose(1, 2)).last_hidden_state  # before fc_norm
    ours = create_model("test_videomae", mlp_ratio=2.0)
    _compare(hf, ours, clip, ref, feats)

import pytest
import torch
import torch.nn as nn

from kinetix.errors import CheckpointError, ModelNotFoundError
from kinetix.models import PretrainedCfg, create_model, get_pretrained_cfg, list_models, register_model
from kinetix.models._builder import convert_checkpoint, load_checkpoint
from kinetix.models._registry import _REGISTRY
from kinetix.utils.state_dict import read_safetensors_metadata, read_state_dict


class _Tiny(nn.Module):
    def __init__(self, num_classes=5, num_frames=4):
        super().__init__()
        self.num_frames = num_frames
        self.body = nn.Conv3d(3, 8, 1)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3, 4)))

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes):
        self.head = nn.Linear(8, num_classes)


@pytest.fixture
def tiny_entry():
    @register_model(cfgs={"a": PretrainedCfg(num_frames=4, num_classes=5), "b": PretrainedCfg(num_classes=7)})
    def _registry_probe_model(**kwargs):
        return _Tiny(**kwargs)

    yield "_registry_probe_model"
    _REGISTRY.pop("_registry_probe_model")


def test_duplicate_registration_raises(tiny_entry):
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def _registry_probe_model():
            return nn.Identity()


def test_tags_select_cfg_and_defaults(tiny_entry):
    assert get_pretrained_cfg(tiny_entry).tag == "a"
    m = create_model(f"{tiny_entry}.b")
    assert m.head.out_features == 7 and m.pretrained_cfg.tag == "b"
    m = create_model(tiny_entry, num_classes=3, num_frames=16)
    assert m.pretrained_cfg.num_classes == 3 and m.pretrained_cfg.num_frames == 16
    assert f"{tiny_entry}.b" in list_models("_registry_probe*", with_tags=True)


def test_unknown_model_suggests_close_names(tiny_entry):
    with pytest.raises(ModelNotFoundError, match="Did you mean _registry_probe_model"):
        create_model("_registry_probe_modle")
    with pytest.raises(ModelNotFoundError, match="no weights tagged 'zzz'"):
        create_model(f"{tiny_entry}.zzz")


def test_checkpoint_roundtrip_and_head_resize(tiny_entry, tmp_path):
    src = create_model(f"{tiny_entry}.b")  # 7 classes
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, tmp_path / "foreign.pth")
    dst = create_model(tiny_entry)  # 5 classes: head is resized to the checkpoint's 7
    out = convert_checkpoint(dst, tmp_path / "foreign.pth", tmp_path / "w.safetensors")
    assert dst.head.out_features == 7
    x = torch.randn(2, 3, 4, 8, 8)
    torch.testing.assert_close(dst(x), src(x))
    meta = read_safetensors_metadata(out)
    assert meta["kinetix_model"] == tiny_entry and '"num_classes": 7' in meta["pretrained_cfg"]
    again = create_model(tiny_entry, checkpoint=str(out))
    torch.testing.assert_close(again(x), src(x))
    folder = tmp_path / "ckpt"  # a kinetix checkpoint folder loads through its model.safetensors
    folder.mkdir()
    out.rename(folder / "model.safetensors")
    torch.testing.assert_close(create_model(tiny_entry, checkpoint=str(folder))(x), src(x))


def test_bad_checkpoints_give_clear_errors(tiny_entry, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match=r"without model\.safetensors"):
        read_state_dict(tmp_path / "folder")
    # A pickle that would execute code is refused, not run.
    torch.save({"state_dict": {"w": torch.zeros(1)}, "evil": _Tiny()}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="never unpickles code"):
        read_state_dict(tmp_path / "pickled.pth")
    torch.save({"body.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(create_model(tiny_entry), tmp_path / "wrong.pth")


def test_official_style_extras_are_allowed(tmp_path):
    import argparse

    sd = {"a": torch.ones(2)}
    torch.save({"opt": argparse.Namespace(lr=0.1), "model": sd, "epoch": 1}, tmp_path / "sifa.pth")
    assert read_state_dict(tmp_path / "sifa.pth").keys() == {"a"}

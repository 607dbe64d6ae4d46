"""EViT keep-rate warm-up (``schedule.keep_rate_start_epochs`` / ``keep_rate_shrink_epochs``) in a real
Lightning fit of a pruning VideoMAE on real mp4 files."""

import itertools
import math
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny

from kinetix.config import load_config
from kinetix.engine import run
from kinetix.errors import ConfigError
from kinetix.layers.token_pruning import pruning_blocks, scheduled_keep_rate


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("mp4")
    tiny.make_mp4_dataset(out)
    return out


@pytest.fixture(autouse=True)
def _fresh_run_dir_env(monkeypatch):
    monkeypatch.delenv("KINETIX_RUN_DIR", raising=False)


def _cfg(tmp_path, data_dir, overrides):
    p = tmp_path / "cfg.yaml"
    p.write_text(tiny.config_text(data_dir, tmp_path / "runs"))
    return load_config(p, overrides)


def test_scheduled_keep_rate_is_a_cosine_from_one_to_the_target():
    assert scheduled_keep_rate(0.7, 0.0) == 1.0 and scheduled_keep_rate(0.7, -1.0) == 1.0
    assert math.isclose(scheduled_keep_rate(0.7, 1.0), 0.7)
    assert math.isclose(scheduled_keep_rate(0.7, 5.0), 0.7)
    assert math.isclose(scheduled_keep_rate(0.7, 0.5), 0.85)
    rates = [scheduled_keep_rate(0.5, i / 20) for i in range(21)]
    assert all(a > b for a, b in itertools.pairwise(rates))


class _Probe(pl.Callback):
    """Tokens left by the first pruning block in every training step and validation batch."""

    def __init__(self):
        self.train, self.val, self._last = [], [], None

    def on_fit_start(self, trainer, pl_module):
        blk = pruning_blocks(pl_module)[0]
        blk.register_forward_hook(lambda m, i, out: setattr(self, "_last", (m.keep_rate, out.shape[1])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train.append((trainer.global_step - 1, *self._last))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val.append(self._last)


def test_keep_rate_warm_up_in_a_real_fit(tmp_path, data_dir):
    # test_videomae: 4 frames x 32 px -> 2 slices of 4 x 4 tokens: N = 32, 16 key tokens;
    # keep 0.75 keeps ceil(0.75 * 32) = 24 tokens. 12 videos / batch 4 = 3 steps an epoch, 3 epochs.
    cfg = _cfg(tmp_path, data_dir, [
        "model.name=test_videomae", "model.kwargs={keep_rate: 0.75}", "train.epochs=3",
        "schedule.keep_rate_start_epochs=1", "schedule.keep_rate_shrink_epochs=1",
    ])  # fmt: skip
    probe = _Probe()
    out = run.fit(cfg, callbacks=[probe])
    steps = [s for s, _, _ in probe.train]
    assert steps == list(range(9))
    expected = [1.0] * 4 + [scheduled_keep_rate(0.75, 1 / 3), scheduled_keep_rate(0.75, 2 / 3)] + [0.75] * 3
    assert [r for _, r, _ in probe.train] == pytest.approx(expected)
    assert [n for _, _, n in probe.train] == [32] * 4 + [math.ceil(r * 32) for r in expected[4:]]
    assert probe.val and all(v == (0.75, 24) for v in probe.val)  # validation runs the target model
    assert all(m.keep_rate == 0.75 for m in pruning_blocks(out["module"]))  # and so does the result


def test_keep_rate_schedule_without_pruning_warns_and_bad_values_are_refused(tmp_path, data_dir):
    cfg = _cfg(tmp_path, data_dir, ["schedule.keep_rate_shrink_epochs=1"])  # engine_tiny prunes nothing
    with pytest.warns(UserWarning, match=r"model\.kwargs\.keep_rate is 1"):
        assert run.fit(cfg)["checkpoint"] is not None
    cfg = _cfg(tmp_path, data_dir, ["model.name=test_videomae", "model.kwargs={keep_rate: 0.75}",
                                    "schedule.keep_rate_shrink_epochs=-1"])  # fmt: skip
    with pytest.raises(ConfigError, match=">= 0"):
        run.fit(cfg)

"""Datasets on real mp4 files written with PyAV: frames, labels, views, bad-sample policy, AVA boxes."""

import logging
import pickle

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from kinetix.data import transforms as T
from kinetix.data.datasets import (
    AVADataset,
    VideoClassificationDataset,
    check_bad_fraction,
    collate_detection,
    collate_skipping,
    detect_format,
)
from kinetix.data.io import VideoReader
from kinetix.data.sampling import keyframe_indices, multiview_indices, segment_indices
from kinetix.errors import DatasetError, VideoDecodeError


def _as_uint8(video):
    """Dataset output with the default transform (float [0,1] (C,T,H,W)) -> uint8 (T,H,W,C)."""
    return (video * 255).round().to(torch.uint8).permute(1, 2, 3, 0)


@pytest.fixture
def three_videos(make_video, tmp_path):
    paths = [make_video(f"v{i}.mp4", num_frames=20 + 10 * i, size=(32, 40), seed=i) for i in range(3)]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p.name} {i % 2}\n" for i, p in enumerate(paths)))
    return paths, lst


def test_frames_are_the_sampled_frames(three_videos, decode_all):
    paths, lst = three_videos
    ds = VideoClassificationDataset.from_annotations(lst, num_frames=4, mode="test")
    assert len(ds) == 3 and ds.num_classes == 2 and detect_format(lst) == "list"
    for i, p in enumerate(paths):
        item = ds[i]
        ref = decode_all(p)
        expected = ref[multiview_indices(len(ref), 4, 1)[0]]
        assert item["label"] == i % 2 and item["index"] == i
        assert item["video"].shape == (3, 4, 32, 40) and item["video"].dtype == torch.float32
        assert np.array_equal(_as_uint8(item["video"]).numpy(), expected)


def test_dense_multiview_and_multicrop_shapes(three_videos, decode_all):
    paths, lst = three_videos
    tf = T.test_transform(24, (0.5,) * 3, (0.5,) * 3, crops=3)
    ds = VideoClassificationDataset.from_annotations(
        lst, num_frames=4, sampling="dense", frame_interval=2, mode="test", num_clips=2, transform=tf
    )
    item = ds[2]
    assert item["video"].shape == (6, 3, 4, 24, 24)  # 2 clips x 3 crops, clip-major
    ref = torch.from_numpy(decode_all(paths[2]))
    idx = multiview_indices(len(ref), 4, 2, "dense", 2)
    expected, _ = tf(ref[idx[1]])
    assert torch.allclose(item["video"][3:], expected)


def test_two_segment_clips_use_tsm_twice_sampling(three_videos, decode_all):
    paths, lst = three_videos
    ds = VideoClassificationDataset.from_annotations(lst, num_frames=4, mode="test", num_clips=2)
    video = ds[1]["video"]  # (2, C, T, H, W): centres, then starts
    ref = decode_all(paths[1])
    idx = segment_indices(len(ref), 4, "twice")
    for v in range(2):
        assert np.array_equal(_as_uint8(video[v]).numpy(), ref[idx[v]])


def test_train_mode_is_seeded_per_epoch_and_item(three_videos):
    _, lst = three_videos
    tf = T.train_transform(24, (0.5,) * 3, (0.5,) * 3, scale_jitter="rrc")
    ds = VideoClassificationDataset.from_annotations(lst, num_frames=4, mode="train", transform=tf, seed=3)
    ds.set_epoch(0)
    a, b = ds[1]["video"], ds[1]["video"]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1]["video"])
    # follows the global RNG when no epoch is set (the engine seeds it per item)
    ds2 = pickle.loads(pickle.dumps(ds))  # no open handles: picklable
    ds2.epoch = None
    torch.manual_seed(5)
    c = ds2[1]["video"]
    torch.manual_seed(5)
    assert torch.equal(c, ds2[1]["video"])


def test_dataloader_workers(three_videos):
    _, lst = three_videos
    ds = VideoClassificationDataset.from_annotations(
        lst, num_frames=4, mode="test", transform=T.test_transform(24, (0.5,) * 3, (0.5,) * 3)
    )
    batch = next(iter(DataLoader(ds, batch_size=3, num_workers=1)))
    assert batch["video"].shape == (3, 3, 4, 24, 24) and batch["label"].tolist() == [0, 1, 0]
    assert torch.equal(batch["video"][1], ds[1]["video"])


def test_flip_label_map_swaps_dataset_label(three_videos):
    _, lst = three_videos
    tf = T.Compose([T.RandomHorizontalFlip(1.0, {0: 1, 1: 0}), T.Normalize((0,) * 3, (1,) * 3)])
    ds = VideoClassificationDataset.from_annotations(lst, num_frames=2, transform=tf)
    assert [ds[i]["label"] for i in range(3)] == [1, 0, 1]


def test_bad_files_are_skipped_counted_and_logged(make_video, tmp_path, caplog):
    good = [make_video(f"g{i}.mp4", num_frames=12, size=(32, 32), seed=i) for i in range(4)]
    (tmp_path / "empty.mp4").touch()
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 50)
    names = [p.name for p in good] + ["empty.mp4", "junk.mp4", "missing.mp4"]
    samples = [(n, 0) for n in names]
    # evaluation: a bad sample is skipped (a marker the collate drops and counts), never replaced
    ds = VideoClassificationDataset(samples, tmp_path, num_frames=2, mode="test", max_bad_fraction=0.6)
    with caplog.at_level(logging.WARNING, logger="kinetix.data.datasets"):
        items = [ds[i] for i in range(len(ds))]
    assert set(ds.bad_samples) == {str(tmp_path / n) for n in ("empty.mp4", "junk.mp4", "missing.mp4")}
    assert (
        ds.bad_indices == {4, 5, 6} and [it.get("skipped", False) for it in items] == [False] * 4 + [True] * 3
    )
    batch = collate_skipping(items)
    assert batch["index"].tolist() == [0, 1, 2, 3] and batch["bad_indices"].tolist() == [4, 5, 6]
    assert collate_skipping(items[4:]).keys() == {"bad_indices"}  # nothing left to score
    assert "junk.mp4" in caplog.text and "skipping unreadable sample" in caplog.text
    # training: replaced by a good sample chosen deterministically; the item names what it replaces
    train = VideoClassificationDataset(samples, tmp_path, num_frames=2, mode="train", max_bad_fraction=0.6)
    train.set_epoch(0)
    items = [train[i] for i in range(len(train))]
    assert all(it["index"] < 4 for it in items) and all(b >= 4 for it in items[4:] for b in it["bad_indices"])
    assert [it["index"] for it in items[4:]] == [train[i]["index"] for i in range(4, 7)]  # deterministic
    assert set(collate_skipping(items)["bad_indices"].tolist()) == {4, 5, 6}


@pytest.mark.parametrize(("num_bad", "limit", "stops"), [(2, 0.01, True), (2, 0.05, False), (1, 0.0, True)])
def test_bad_fraction_is_over_the_whole_set(make_video, tmp_path, num_bad, limit, stops):
    """2 bad of 50 (4%): stops at a 1% limit (at the first bad one: 0.5 allowed), runs
    through at 5% (2.5 allowed) wherever the bad ones sit, even at the very start."""
    good = make_video("g.mp4", num_frames=12, size=(32, 32))
    for i in range(num_bad):
        (tmp_path / f"bad{i}.mp4").write_bytes(b"\x00" * 100)
    samples = [(f"bad{i}.mp4", 0) for i in range(num_bad)] + [(good.name, 0)] * (50 - num_bad)
    for mode in ("test", "train"):
        ds = VideoClassificationDataset(samples, tmp_path, num_frames=2, mode=mode, max_bad_fraction=limit)
        if stops:
            with pytest.raises(
                DatasetError,
                match=rf"(?s)\b{int(limit * 50) + 1} of 50 samples are unreadable .*bad0.mp4.*kinetix data check",
            ):
                [ds[i] for i in range(len(ds))]
        else:
            [ds[i] for i in range(len(ds))]
            assert len(ds.bad_indices) == num_bad
            check_bad_fraction(num_bad, 50, limit)  # the engine's whole-set check agrees
    with pytest.raises(ValueError, match="max_bad_fraction"):
        VideoClassificationDataset(samples, tmp_path, max_bad_fraction=1.5)


def test_truncated_video_is_a_bad_sample(make_video, tmp_path):
    """A tail-truncated mp4 (header at the front, data cut at 40%): its header still says 90
    frames; sampling over those hits missing frames -> the sample is bad, never re-sampled from
    the 36 frames that survived."""
    full = _faststart_mp4(tmp_path / "full.mp4", 90)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.4)])
    with VideoReader(cut) as r:
        assert r.num_frames == 90 and r.index.present < 60
        r.get_frames([0, 1])  # the part that is there decodes
        with pytest.raises(VideoDecodeError, match=r"truncated: it declares 90 frames but holds only \d+"):
            r.get_frames([0, 89])
    ds = VideoClassificationDataset(
        [("full.mp4", 0), ("cut.mp4", 1)], tmp_path, num_frames=8, mode="test", max_bad_fraction=0.5
    )
    assert not ds[0].get("skipped") and ds[1]["skipped"] and "truncated" in ds[1]["reason"]


def _faststart_mp4(path, num_frames):
    """An H.264 mp4 with its index (moov) at the front, as web videos are."""
    frames = np.random.default_rng(0).integers(0, 255, (num_frames, 48, 48, 3), dtype=np.uint8)
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as c:
        s = c.add_stream("libx264", rate=30)
        s.width = s.height = 48
        s.pix_fmt = "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())
    return path


def test_kinetics_untrimmed_span_and_rawframes(make_video, make_frame_folder, decode_all, tmp_path):
    long = make_video("abc.mp4", num_frames=100, size=(32, 32), fps=25)  # 4 s: untrimmed for span 2..3 s
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nwave,abc,2,3,train\n")
    ds = VideoClassificationDataset.from_annotations(csv, tmp_path, num_frames=5, mode="test")
    assert detect_format(csv) == "kinetics" and ds.classes == ["wave"]
    expected = decode_all(long)[50 + multiview_indices(25, 5, 1)[0]]
    assert np.array_equal(_as_uint8(ds[0]["video"]).numpy(), expected)
    _, frames = make_frame_folder("clip01", num_frames=10)
    raw = tmp_path / "raw.txt"
    raw.write_text("clip01 10 2\n")
    ds = VideoClassificationDataset.from_annotations(raw, tmp_path, num_frames=5, mode="test")
    assert detect_format(raw) == "rawframes" and ds[0]["label"] == 2
    assert ds[0]["video"].shape == (3, 5, *frames.shape[1:3])


@pytest.fixture
def ava_files(make_video, tmp_path):
    make_video("vid1.mp4", num_frames=40, size=(48, 64), fps=10)  # 4 s, H=48, W=64
    make_video("vid2.mp4", num_frames=40, size=(40, 80), fps=10, seed=1)
    (tmp_path / "ann.csv").write_text(
        "vid1,2,0.25,0.5,0.75,1.0,1,0\n"
        "vid1,2,0.25,0.5,0.75,1.0,3,0\n"
        "vid1,2,0.0,0.0,0.5,0.5,2,1\n"
        "vid1,3,0.1,0.1,0.2,0.2,2,0\n"
        "vid2,1,0.5,0.5,1.0,1.0,3,0\n"
    )
    (tmp_path / "labels.pbtxt").write_text(
        'item { name: "a" id: 1 }\nitem { name: "b" id: 2 }\nitem { name: "c" id: 3 }\n'
    )
    (tmp_path / "excl.csv").write_text("vid1,3\n")
    return tmp_path


def test_ava_boxes_labels_and_clip(ava_files, decode_all):
    root = ava_files
    ds = AVADataset(
        root / "ann.csv",
        root,
        root / "labels.pbtxt",
        num_frames=4,
        frame_interval=2,
        exclusions=root / "excl.csv",
    )
    assert len(ds) == 2 and ds.num_classes == 3 and ds.classes == ["a", "b", "c"]
    item = ds[0]
    assert item["meta"] == {"video_id": "vid1", "timestamp": 2, "orig_size": (48, 64), "input_size": (48, 64)}
    torch.testing.assert_close(
        item["boxes"], torch.tensor([[16.0, 24.0, 48.0, 48.0], [0.0, 0.0, 32.0, 24.0]])
    )
    assert item["labels"].tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    expected = decode_all(root / "vid1.mp4")[keyframe_indices(20, 4, 2, 40)]  # keyframe 2 s * 10 fps
    assert np.array_equal(_as_uint8(item["video"]).numpy(), expected)
    # box-aware resize: short side 48 -> 24 halves every coordinate
    tf = T.detection_transform(24, (0.5,) * 3, (0.5,) * 3)
    small = AVADataset(
        root / "ann.csv",
        root,
        root / "labels.pbtxt",
        num_frames=4,
        transform=tf,
        exclusions=root / "excl.csv",
    )
    it0, it1 = small[0], small[1]
    torch.testing.assert_close(it0["boxes"], item["boxes"] / 2)
    assert it0["meta"]["input_size"] == (24, 32) and it1["video"].shape == (3, 4, 24, 48)
    batch = collate_detection([it0, it1])
    assert batch["video"].shape == (2, 3, 4, 24, 48) and len(batch["boxes"]) == 2
    assert (
        torch.equal(batch["video"][0, ..., :32], it0["video"])
        and batch["video"][0, ..., 32:].abs().sum() == 0
    )
    torch.testing.assert_close(batch["boxes"][1], torch.tensor([[24.0, 12.0, 48.0, 24.0]]))


def test_ava_csv_is_not_a_classification_list(ava_files):
    with pytest.raises(DatasetError, match="use AVADataset"):
        VideoClassificationDataset.from_annotations(ava_files / "ann.csv")


def test_ava_flip_moves_boxes(ava_files):
    root = ava_files
    tf = T.Compose([T.RandomHorizontalFlip(1.0), T.Normalize((0,) * 3, (1,) * 3)])
    ds = AVADataset(root / "ann.csv", root, root / "labels.pbtxt", num_frames=2, transform=tf)
    torch.testing.assert_close(ds[0]["boxes"][0], torch.tensor([16.0, 24.0, 48.0, 48.0]))  # symmetric box
    torch.testing.assert_close(ds[0]["boxes"][1], torch.tensor([32.0, 0.0, 64.0, 24.0]))


def test_synthetic_temporal_csv_and_list_agree(tmp_path):
    from kinetix.data.synthetic import generate

    out = tmp_path / "synth"
    generate("temporal", out, num_videos=6, size=32, fps=8, seconds=1, seed=0)
    from_csv = VideoClassificationDataset.from_annotations(out / "train.csv", num_frames=4, mode="test")
    from_list = VideoClassificationDataset.from_annotations(out / "train.txt", num_frames=4, mode="test")
    classes = (out / "classes.txt").read_text().splitlines()
    assert from_csv.classes == from_list.classes == classes
    by_path = {r.path: r.label for r in from_list.samples}
    assert {r.path: r.label for r in from_csv.samples} == by_path  # same files, same labels
    item = from_csv[0]
    assert item["video"].shape == (3, 4, 32, 32) and not from_csv.bad_samples


def test_synthetic_detection_loads_with_boxes_inside_frames(tmp_path):
    from kinetix.data.synthetic import generate

    out = tmp_path / "det"
    generate("detection", out, num_videos=2, size=(32, 48), fps=8, seconds=3, seed=0)
    a = out / "annotations"
    ds = AVADataset(
        a / "train.csv",
        out / "videos",
        a / "label_map.pbtxt",
        num_frames=4,
        frame_interval=2,
        exclusions=a / "excluded_timestamps.csv",
    )
    assert len(ds) > 0
    for i in range(len(ds)):
        it = ds[i]
        b = it["boxes"]
        assert it["video"].shape == (3, 4, 32, 48) and len(b) > 0
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 2] <= 48).all()
            and (b[:, 3] <= 32).all()
            and (b[:, 2] > b[:, 0]).all()
        )
        assert (it["labels"].sum(1) >= 1).all()
    assert not ds.bad_samples


def test_cache_decoded_gives_the_same_clips(three_videos):
    paths, lst = three_videos
    kw = dict(num_frames=4, mode="train", seed=3)
    plain = VideoClassificationDataset.from_annotations(lst, **kw)
    cached = VideoClassificationDataset.from_annotations(lst, cache_decoded=True, **kw)
    for epoch in (0, 1):  # second epoch served from memory, with new random offsets
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(plain)):
            assert torch.equal(plain[i]["video"], cached[i]["video"])
    assert len(cached._decoded) == len(paths)

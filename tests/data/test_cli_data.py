"""``check_dataset`` and the ``kinetix data synth|check`` CLI, in-process, on real mp4 files."""

import json

import pytest

from kinetix.cli.main import main
from kinetix.data.check import check_dataset


@pytest.fixture
def messy_list(make_video, tmp_path):
    make_video("a.mp4", num_frames=25, size=(32, 32), fps=25)  # 1 s
    make_video("b.mp4", num_frames=60, size=(32, 48), fps=25)  # 2.4 s
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x01" * 200)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    lst = tmp_path / "train.txt"
    lst.write_text("a.mp4 cat\nb.mp4 1\nbroken.mp4 0\nmissing.mp4 dog\nc.mp4 zebra\njustonefield\n")
    return lst


def test_check_reports_every_problem(messy_list, tmp_path):
    rep = check_dataset(messy_list)
    assert rep.annotation_format == "list" and rep.classes == ["cat", "dog"]
    assert rep.num_samples == 4 and rep.class_counts == {"cat": 2, "dog": 2}
    assert set(rep.unreadable) == {str(tmp_path / "broken.mp4"), str(tmp_path / "missing.mp4")}
    assert "does not exist" in rep.unreadable[str(tmp_path / "missing.mp4")]
    assert rep.unknown_labels == {"zebra": 1}
    assert [e.split(": ")[0] for e in rep.annotation_errors] == [f"{messy_list}:5", f"{messy_list}:6"]
    assert sorted(round(d, 1) for d in rep.durations) == [1.0, 2.4]
    hist = dict(rep.duration_histogram())
    assert hist["1-2s"] == 1 and hist["2-5s"] == 1 and sum(hist.values()) == 2
    assert not rep.ok and rep.frame_sizes == {"32x32": 1, "48x32": 1}
    text = rep.format()
    assert "unreadable videos: 2" in text and "unknown labels: 1" in text and "PROBLEMS FOUND" in text
    json.dumps(rep.to_dict())  # serialisable


def test_cli_check_exit_codes_and_json(messy_list, make_video, tmp_path, capsys):
    assert main(["data", "check", str(messy_list), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["unknown_labels"] == {"zebra": 1}
    clean = tmp_path / "clean.txt"
    clean.write_text("a.mp4 0\nb.mp4 1\n")
    assert main(["data", "check", str(clean)]) == 0
    assert "status: OK" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "nope.txt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_check_class_folders_and_kinetics(make_video, tmp_path):
    make_video("ds/jump/x.mp4", num_frames=10, size=(32, 32))
    make_video("ds/run/y.mp4", num_frames=10, size=(32, 32))
    make_video("ds/run/z.mp4", num_frames=10, size=(32, 32))
    rep = check_dataset(tmp_path / "ds")
    assert rep.annotation_format == "folder" and rep.class_counts == {"jump": 1, "run": 2} and rep.ok
    make_video("k/vid1_000002_000004.mp4", num_frames=10, size=(32, 32))
    csv = tmp_path / "k" / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nrun,vid1,2,4,val\nrun,gone,0,10,val\n")
    rep = check_dataset(csv)
    assert rep.annotation_format == "kinetics" and rep.num_videos == 2
    assert list(rep.unreadable) == [str(tmp_path / "k" / "gone.mp4")]


def test_check_ava(make_video, tmp_path):
    make_video("ava/v1.mp4", num_frames=30, size=(32, 32), fps=10)  # 3 s
    d = tmp_path / "ava"
    (d / "labels.pbtxt").write_text('item { name: "stand" id: 1 }\nitem { name: "walk" id: 2 }\n')
    (d / "excluded_timestamps.csv").write_text("v1,0002\n")
    (d / "train.csv").write_text(
        "v1,0001,0.1,0.1,0.5,0.5,1,0\nv1,0001,0.1,0.1,0.5,0.5,7,0\nv1,0002,0.1,0.1,0.5,0.5,2,0\nv1,0009,0.1,0.1,0.5,0.5,2,0\n"
    )
    rep = check_dataset(d / "train.csv")
    assert rep.annotation_format == "ava" and rep.unknown_labels == {"7": 1}
    assert rep.detection["keyframes"] == 2 and rep.detection["excluded"] == 1
    assert rep.detection["outside_video"] == 1  # timestamp 9 s in a 3 s video
    assert rep.class_counts == {"stand": 1, "walk": 1} and not rep.ok


def test_cli_synth_then_check(tmp_path, capsys):
    out = tmp_path / "synth"
    args = ["--out", str(out), "--num-videos", "6", "--size", "32", "--seconds", "1", "--fps", "8"]
    assert main(["data", "synth", "--kind", "temporal", *args]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "kinetix data check" in printed
    assert (out / "classes.txt").is_file() and list((out / "videos").glob("*.mp4"))
    assert main(["data", "check", str(out)]) == 0, capsys.readouterr().out
    report = capsys.readouterr().out
    assert "train.csv" in report and "status: OK" in report
    det = tmp_path / "det"
    assert (
        main(
            [
                "data",
                "synth",
                "--kind",
                "detection",
                "--out",
                str(det),
                "--num-videos",
                "2",
                "--size",
                "32x48",
                "--seconds",
                "3",
                "--fps",
                "8",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["data", "check", str(det), "--json"]) == 0, capsys.readouterr().out
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] and all(
        p["annotation_format"] == "ava" and p["detection"]["boxes"] > 0 for p in rep["parts"]
    )


def test_data_help_is_friendly(capsys):
    with pytest.raises(SystemExit):
        main(["data", "synth", "--help"])
    text = capsys.readouterr().out
    assert "--kind {temporal,detection}" in text and "examples:" in text
    assert main(["data"]) == 2

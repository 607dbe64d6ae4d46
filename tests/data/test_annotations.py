"""Annotation parsers: correct records on well-formed files, file:line errors on malformed ones."""

import json

import numpy as np
import pytest

from kinetix.data import annotations as A
from kinetix.errors import AnnotationError


def _write(path, text):
    path.write_text(text)
    return path


def test_kinetics_csv_classes_sorted_and_paths_resolved(tmp_path):
    csv = _write(
        tmp_path / "train.csv",
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,aaa,10,20,train\n"
        '"air drumming",bbb,0,10,train\n'
        "abseiling,ccc,5,15,train\n"
        "abseiling,ddd,1,11,train\n",
    )
    recs, classes = A.parse_kinetics_csv(csv)
    assert classes == ["abseiling", "air drumming", "zumba"]
    assert [r.label for r in recs] == [2, 1, 0, 0]
    assert recs[0].start == 10 and recs[0].end == 20 and recs[0].source.endswith("train.csv:2")
    root = tmp_path / "videos"
    (root / "air_drumming").mkdir(parents=True)
    (root / "aaa.mp4").touch()  # plain id
    (root / "air_drumming" / "bbb_000000_000010.mp4").touch()  # label subfolder + trimmed name
    (root / "ccc_000005_000015.mkv").touch()  # other extension
    resolved, missing = A.resolve_paths(recs, root)
    assert [r.path for r in resolved] == [
        "aaa.mp4",
        "air_drumming/bbb_000000_000010.mp4",
        "ccc_000005_000015.mkv",
        "ddd.mp4",
    ]
    assert missing == 1
    # explicit classes: unknown label is an error naming the line
    with pytest.raises(AnnotationError, match=r"train.csv:2: unknown label 'zumba'"):
        A.parse_kinetics_csv(csv, classes=["abseiling", "air drumming"])


@pytest.mark.parametrize(
    "text,match",
    [
        ("youtube_id,label\nx,y\n", r"bad.csv:1: header"),
        ("label,youtube_id,time_start,time_end,split\na,b,x,3,train\n", r"bad.csv:2: time_start/time_end"),
        (
            "label,youtube_id,time_start,time_end,split\na,b,5,3,train\n",
            r"bad.csv:2: time_end 3.0 <= time_start",
        ),
        ("label,youtube_id,time_start,time_end,split\na,b,1\n", r"bad.csv:2: expected 5 fields"),
    ],
)
def test_kinetics_csv_errors_name_file_and_line(tmp_path, text, match):
    with pytest.raises(AnnotationError, match=match):
        A.parse_kinetics_csv(_write(tmp_path / "bad.csv", text))


def test_video_list_space_comma_names_and_errors(tmp_path):
    f = _write(tmp_path / "list.txt", "# comment\na/v 1.mp4 1\n\nb.mp4,0\nc.mp4 cat\n")
    recs, _ = A.parse_video_list(f, classes=["dog", "cat"])
    assert [(r.path, r.label) for r in recs] == [("a/v 1.mp4", 1), ("b.mp4", 0), ("c.mp4", 1)]
    with pytest.raises(AnnotationError, match=r"list.txt:5: label 'cat' is a name but no class list"):
        A.parse_video_list(f)
    with pytest.raises(AnnotationError, match=r"list.txt:2: label index 1 is outside 0..0"):
        A.parse_video_list(f, classes=["dog"])
    classes_file = _write(tmp_path / "classes.txt", "dog\ncat\n")
    assert A.parse_video_list(f, classes=classes_file)[1] == ["dog", "cat"]
    errors = []
    bad = _write(tmp_path / "bad.txt", "ok.mp4 0\nnolabel\nx.mp4 7\n")
    recs, _ = A.parse_video_list(bad, classes=["a"], on_error=errors.append)
    assert len(recs) == 1 and [e.line for e in errors] == [2, 3]


def test_rawframe_list(tmp_path):
    f = _write(tmp_path / "raw.txt", "frames/001 48 3\nframes/002 x 1\n")
    with pytest.raises(AnnotationError, match=r"raw.txt:2: num_frames 'x'"):
        A.parse_rawframe_list(f)
    recs, _ = A.parse_rawframe_list(f, on_error=lambda e: None)
    assert recs == [A.VideoRecord("frames/001", 3, num_frames=48, source=f"{f}:1")]


def test_ssv2_json(tmp_path):
    labels = _write(
        tmp_path / "labels.json",
        json.dumps({"Holding something next to something": "1", "Pushing something from left to right": "0"}),
    )
    ann = _write(
        tmp_path / "train.json",
        json.dumps(
            [
                {
                    "id": "78687",
                    "label": "holding a pen next to a cup",
                    "template": "Holding [something] next to [something]",
                    "placeholders": ["a pen", "a cup"],
                },
                {
                    "id": "42",
                    "label": "x",
                    "template": "Pushing [something] from left to right",
                    "placeholders": ["x"],
                },
            ]
        ),
    )
    recs, classes = A.parse_ssv2(ann, labels)
    assert classes == ["Pushing something from left to right", "Holding something next to something"]
    assert [(r.path, r.label, r.stems) for r in recs] == [
        ("78687.webm", 1, ("78687",)),
        ("42.webm", 0, ("42",)),
    ]
    test = _write(tmp_path / "test.json", json.dumps([{"id": "7"}]))
    assert A.parse_ssv2(test, labels)[0][0].label == -1
    bad = _write(tmp_path / "bad.json", json.dumps([{"id": "1", "template": "Flying [something]"}]))
    with pytest.raises(AnnotationError, match="unknown class 'Flying something'"):
        A.parse_ssv2(bad, labels)
    broken = _write(tmp_path / "broken.json", '[{"id": 1},\n oops]')
    with pytest.raises(AnnotationError, match=r"broken.json:2: invalid JSON"):
        A.parse_ssv2(broken, labels)


def test_ucf101_and_hmdb51_splits(tmp_path):
    _write(tmp_path / "classInd.txt", "1 ApplyEyeMakeup\n2 Archery\n")
    train = _write(
        tmp_path / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g01_c01.avi 2\n",
    )
    test = _write(tmp_path / "testlist01.txt", "Archery/v_Archery_g02_c01.avi\n")
    recs, classes = A.parse_ucf101(train)
    assert classes == ["ApplyEyeMakeup", "Archery"] and [r.label for r in recs] == [0, 1]
    assert A.parse_ucf101(test)[0][0].label == 1
    wrong = _write(tmp_path / "trainlist02.txt", "Archery/v_Archery_g01_c01.avi 1\n")
    with pytest.raises(AnnotationError, match=r"trainlist02.txt:1: label 1 disagrees with folder 'Archery'"):
        A.parse_ucf101(wrong)
    hmdb = tmp_path / "hmdb"
    hmdb.mkdir()
    _write(hmdb / "wave_test_split1.txt", "a.avi 1\nb.avi 2\nc.avi 0\n")
    _write(hmdb / "clap_test_split1.txt", "d.avi 2\ne.avi 1\n")
    _write(hmdb / "clap_test_split2.txt", "d.avi 1\n")
    recs, classes = A.parse_hmdb51(hmdb, 1, "train")
    assert classes == ["clap", "wave"]
    assert [(r.path, r.label) for r in recs] == [("clap/e.avi", 0), ("wave/a.avi", 1)]
    assert [r.path for r in A.parse_hmdb51(hmdb, 1, "test")[0]] == ["clap/d.avi", "wave/b.avi"]
    _write(hmdb / "wave_test_split3.txt", "a.avi 5\n")
    with pytest.raises(AnnotationError, match=r"wave_test_split3.txt:1"):
        A.parse_hmdb51(hmdb, 3)


def test_ava_csv_groups_boxes_and_labels(tmp_path):
    csv = _write(
        tmp_path / "ava.csv",
        "vidA,0902,0.1,0.2,0.5,0.9,12,0\n"
        "vidA,0902,0.1,0.2,0.5,0.9,80,0\n"
        "vidA,0902,0.6,0.1,0.9,0.8,12,1\n"
        "vidA,0903,0.1,0.2,0.5,0.9,99,0\n"  # action not in the label map -> skipped
        "vidB,0902,0.0,0.0,1.0,1.0,1,3\n",
    )
    kfs = A.parse_ava_csv(csv, label_ids={1, 12, 80})
    assert [(k.video_id, k.timestamp) for k in kfs] == [("vidA", 902), ("vidB", 902)]
    a = kfs[0]
    np.testing.assert_allclose(a.boxes, [[0.1, 0.2, 0.5, 0.9], [0.6, 0.1, 0.9, 0.8]])
    assert a.labels == [[12, 80], [12]] and a.person_ids.tolist() == [0, 1]
    assert len(A.parse_ava_csv(csv)) == 3  # no label map: keep every action
    with pytest.raises(AnnotationError, match=r"ava.csv:4: action id 99"):
        A.parse_ava_csv(csv, label_ids={1, 12, 80}, unknown="error")
    excl = _write(tmp_path / "excl.csv", "vidB,0902\n")
    assert [k.video_id for k in A.parse_ava_csv(csv, exclusions=A.parse_exclusions(excl))] == ["vidA", "vidA"]


@pytest.mark.parametrize(
    "row,match",
    [
        ("v,0902,0.5,0.2,0.1,0.9,1,0", "not normalised"),
        ("v,0902,0.1,0.2,0.5,1.5,1,0", "not normalised"),
        ("v,09x2,0.1,0.2,0.5,0.9,1,0", "must be integers"),
        ("v,0902,0.1,0.2,0.5", "expected 8 fields"),
    ],
)
def test_ava_csv_errors(tmp_path, row, match):
    f = _write(tmp_path / "a.csv", "v,0902,0.1,0.2,0.5,0.9,1,0\n" + row + "\n")
    with pytest.raises(AnnotationError, match=r"a.csv:2: .*" + match):
        A.parse_ava_csv(f)


def test_label_map_both_variants_and_errors(tmp_path):
    item = _write(
        tmp_path / "items.pbtxt",
        'item {\n  name: "bend/bow (at the waist)"\n  id: 1\n}\n# comment\nitem { name: "crawl" id: 3 }\n',
    )
    assert A.parse_label_map(item) == {1: "bend/bow (at the waist)", 3: "crawl"}
    lab = _write(
        tmp_path / "labels.pbtxt",
        'label {\n  name: "stand"\n  label_id: 11\n  label_type: PERSON_MOVEMENT\n}\n',
    )
    assert A.parse_label_map(lab) == {11: "stand"}
    bad = _write(tmp_path / "bad.pbtxt", 'item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n}\n')
    with pytest.raises(AnnotationError, match=r"bad.pbtxt:5: block needs a name and an id"):
        A.parse_label_map(bad)
    unclosed = _write(tmp_path / "unclosed.pbtxt", 'item {\n  name: "a"\n  id: 1\n')
    with pytest.raises(AnnotationError, match=r"unclosed.pbtxt:1: unclosed block"):
        A.parse_label_map(unclosed)
    dup = _write(tmp_path / "dup.pbtxt", 'item { name: "a" id: 1 }\nitem { name: "b" id: 1 }\n')
    with pytest.raises(AnnotationError, match=r"dup.pbtxt:2: duplicate id 1"):
        A.parse_label_map(dup)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        A.parse_video_list(tmp_path / "nope.txt")
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81\x82")
    with pytest.raises(AnnotationError, match="not a UTF-8"):
        A.parse_video_list(binary)

"""Every dataset layout → the right samples, labels, subjects and folds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fusionfeat.data.manifest import build_manifest, cnmc_subject, detect_layout, write_manifest
from fusionfeat.errors import DatasetError
from tests.conftest import SHARED_DATA, need


def test_cnmc_samples_layout(cnmc_samples):
    m = build_manifest(cnmc_samples)
    assert m.layout == "cnmc"
    assert m.classes == ("hem", "all")
    assert len(m) == 14
    by_name = {Path(s.path).name: s for s in m.samples}
    assert by_name["UID_1_2_2_all.bmp"].group == "1" and by_name["UID_1_2_2_all.bmp"].label == 1
    assert by_name["UID_h3_4_1_hem.bmp"].group == "H3" and by_name["UID_h3_4_1_hem.bmp"].fold == 2
    assert by_name["UID_H10_47_2_hem.bmp"].group == "H10" and by_name["UID_H10_47_2_hem.bmp"].label == 0
    assert any("validation_data" in note for note in m.notes)  # the unlabelled prelim image is reported


def test_cnmc_validation_images_used_when_labelled(tmp_path):
    val = tmp_path / "validation_data" / "C-NMC_test_prelim_phase_data"
    fold = tmp_path / "training_data" / "fold_0"
    for rel in ("all/UID_1_1_1_all.bmp", "hem/UID_H2_1_1_hem.bmp"):
        (fold / rel).parent.mkdir(parents=True, exist_ok=True)
        (fold / rel).write_bytes(b"x")
    val.mkdir(parents=True)
    (val / "7.bmp").write_bytes(b"x")
    (tmp_path / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_text(
        "Patient_ID,new_names,labels\nUID_h4_9_1_hem.bmp,7.bmp,0\n")
    m = build_manifest(tmp_path)
    assert len(m) == 3
    extra = [s for s in m.samples if "validation_data" in s.path][0]
    assert (extra.label, extra.group, extra.fold) == (0, "H4", -1)


def test_allidb2_layout(allidb2):
    m = build_manifest(allidb2)
    assert m.layout == "allidb"
    assert m.counts() == {"hem": 130, "all": 130}
    assert not m.has_groups()
    assert all(s.label == int(Path(s.path).stem[-1]) for s in m.samples)


def test_full_cnmc_file_manifest_subjects():
    path = need(SHARED_DATA / "C-NMC_2019_manifest" / "cnmc_file_manifest.csv")
    m = build_manifest(path, check_files=False)
    assert len(m) == 10661 and m.counts() == {"hem": 3389, "all": 7272}
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "training_data"]
    parsed = [cnmc_subject(Path(r["path"]).name) for r in rows]
    assert parsed == [r["subject_id"].upper() for r in rows]
    all_subjects = {g for g, r in zip(parsed, rows, strict=True) if r["label"] == "all"}
    hem_subjects = {g for g, r in zip(parsed, rows, strict=True) if r["label"] == "hem"}
    assert (len(all_subjects), len(hem_subjects)) == (47, 26)
    folds_of = {}
    for s in m.samples:
        folds_of.setdefault(s.group, set()).add(s.fold)
    assert all(len(f) == 1 for f in folds_of.values()), "C-NMC folds must be subject-disjoint"


def test_class_folders_and_round_trip_csv(tiny_folders, tmp_path):
    m = build_manifest(tiny_folders)
    assert m.layout == "folders" and m.counts() == {"hem": 4, "all": 4}
    out = write_manifest(m, tmp_path / "sub" / "manifest.csv")
    again = build_manifest(out)
    assert again.layout == "csv"
    assert [(s.label, s.group, s.fold) for s in again.samples] == [(s.label, s.group, s.fold) for s in m.samples]
    assert [again.absolute(s).resolve() for s in again.samples] == [m.absolute(s).resolve() for s in m.samples]


def test_csv_numeric_labels_groups_and_folds(tiny_folders):
    rows = ["path,label,subject,fold"]
    rows += [f"hem/cell_{i:03d}.png,0,h{i % 2},fold_{i % 2}" for i in range(4)]
    rows += [f"all/cell_{i:03d}.png,1,{i},{i % 2}" for i in range(4)]
    (tiny_folders / "m.csv").write_text("\n".join(rows) + "\n")
    m = build_manifest(tiny_folders / "m.csv")
    assert m.counts() == {"hem": 4, "all": 4}
    assert {s.group for s in m.samples if s.label == 0} == {"H0", "H1"}
    assert {s.fold for s in m.samples} == {0, 1}


def _single_class(p: Path) -> Path:
    (p / "all").mkdir()
    (p / "all" / "a.png").write_bytes(b"x")
    return p


def _text_file(p: Path) -> Path:
    (p / "notes.txt").write_text("x")
    return p / "notes.txt"


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "cannot tell the layout"),  # empty folder
    (_single_class, "single class"),
    (_text_file, "not a .csv"),
    (lambda p: p / "missing", "no such file"),
])
def test_bad_datasets_are_clear_errors(tmp_path, make, message):
    with pytest.raises(DatasetError, match=message):
        build_manifest(make(tmp_path))


def test_missing_listed_image_and_missing_positive(tiny_folders):
    (tiny_folders / "m.csv").write_text("path,label\nhem/cell_000.png,hem\nall/nope.png,all\n")
    with pytest.raises(DatasetError, match="do not exist"):
        build_manifest(tiny_folders / "m.csv")
    with pytest.raises(DatasetError, match="--positive"):
        build_manifest(tiny_folders, positive="blast")


def test_detect_layout_forced(tiny_folders):
    assert detect_layout(tiny_folders) == "folders"
    with pytest.raises(DatasetError, match="not the C-NMC layout"):
        build_manifest(tiny_folders, layout="cnmc")

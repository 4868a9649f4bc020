"""One layouts module: case names, CSVs as Excel writes them, duplicate names, column names."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from AmyloidKDLib import layouts
from AmyloidKDLib.commands.preprocess import read_cases
from AmyloidKDLib.errors import InputError
from AmyloidKDLib.layouts import case_name, collect_image_cases, read_csv_table, read_image_manifest


@pytest.mark.parametrize("name, case", [
    ("sub-01_T1w.nii.gz", "sub-01_T1w"), ("scan.NII.GZ", "scan"), ("a.b.nii", "a.b"),
    ("OAS30001_AV45_d2430n_msum_SUVR.4dfp.img", "OAS30001_AV45_d2430n_msum_SUVR"),
    ("x.4dfp.ifh", "x"), ("notes.txt", "notes"), (".nii", ".nii"),
])
def test_case_name_strips_image_suffixes(name, case):
    assert case_name(Path("/data") / name) == case


TEXT = "subject_id,t1w,note\nS1,sub-1/T1w.nii.gz,Müller\nS2,b.nii,ok\n"


@pytest.mark.parametrize("encoding, raw", [
    ("utf-8", TEXT.encode("utf-8")),
    ("utf-8-sig", TEXT.encode("utf-8-sig")),                         # Excel "CSV UTF-8": BOM
    ("cp1252", TEXT.encode("cp1252")),                               # Excel "CSV": Windows-1252
    ("utf-16", TEXT.replace(",", "\t").encode("utf-16")),             # Excel "Unicode text"
    ("utf-8", TEXT.replace(",", ";").replace("\n", "\r\n").encode()),  # ';' locales, CRLF
])
def test_csv_files_as_excel_writes_them_read_the_same(tmp_path, encoding, raw, caplog):
    path = tmp_path / "m.csv"
    path.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="AmyloidKDLib.layouts"):
        table = read_csv_table(path)
    assert table.header == ("subject_id", "t1w", "note")      # no BOM glued to the first name
    assert [r["note"] for r in table.rows] == ["Müller", "ok"]
    assert table.lines == (2, 3) and table.encoding == encoding
    assert ("Windows-1252" in caplog.text) == (encoding == "cp1252")


def test_csv_errors_say_what_to_fix(tmp_path):
    with pytest.raises(InputError, match="no such manifest file"):
        read_csv_table(tmp_path / "none.csv", "manifest")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        read_csv_table(tmp_path / "empty.csv")
    (tmp_path / "twice.csv").write_text("t1w,case,t1w\na,b,c\n")
    with pytest.raises(InputError, match="t1w appear twice"):
        read_csv_table(tmp_path / "twice.csv")
    (tmp_path / "bin.csv").write_bytes(b"t1w\n\x81\x8d\x8f\n")   # bytes undefined in cp1252 too
    with pytest.raises(InputError, match="CSV UTF-8"):
        read_csv_table(tmp_path / "bin.csv")


def test_manifest_cases_named_by_case_column_or_file_and_relative_to_the_csv(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("case,t1w,pet_path\nfirst,sub-01/T1w.nii.gz,pet/a.nii\n,/abs/b.nii.gz,\n\n,,c.nii\n")
    cases = read_image_manifest(manifest)
    assert [c.case for c in cases] == ["first", "b", "row5"]      # blank line 4 skipped
    assert cases[0].mri == tmp_path / "sub-01" / "T1w.nii.gz" and cases[0].pet == tmp_path / "pet" / "a.nii"
    assert cases[1].mri == Path("/abs/b.nii.gz") and cases[1].pet is None
    assert cases[2].mri is None and "line 5: empty t1w" in cases[2].problem


def test_repeated_case_names_are_refused_with_where_they_came_from(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("subject_id,t1w\n01,sub-01/T1w.nii.gz\n02,sub-02/T1w.nii.gz\n")
    with pytest.raises(InputError, match=r"same case name \('T1w' from .*line 2, .*line 3\).*'case' column"):
        read_image_manifest(manifest)
    with pytest.raises(InputError, match="same case name"):
        read_cases(str(manifest))                    # preprocess: the same rule
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.nii", "a.nii.gz", "b.nii.gz", "notes.txt"):
        (folder / name).write_bytes(b"")
    with pytest.raises(InputError, match="'a'"):
        collect_image_cases(folder)
    (folder / "a.nii").unlink()
    assert [c.case for c in collect_image_cases(folder)] == ["a", "b"]


def test_preprocess_reads_the_manifest_through_the_layouts_module(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("\ufeffcase,mri_path,pet\nc1,a_T1w.nii.gz,a_pet.nii.gz\n".encode("utf-8"))
    assert read_cases(str(manifest)) == [{"case": "c1", "mri": str(tmp_path / "a_T1w.nii.gz"),
                                          "pet": str(tmp_path / "a_pet.nii.gz")}]
    manifest.write_text("t1w,pet\n\n,p.nii\n")
    with pytest.raises(InputError, match="line 3: empty t1w"):
        read_cases(str(manifest))


def test_the_training_manifest_columns_cover_every_contrast():
    assert set(layouts.CONTRAST_COLUMNS.values()) - {"t2star"} <= set(layouts.MANIFEST_COLUMNS)
    assert layouts.MRI_COLUMNS[0] == layouts.CONTRAST_COLUMNS["T1w"]

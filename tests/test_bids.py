"""Tests of workflows.bids on a tiny pybids-indexed dataset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from pipeline.errors import InputError
from tests.conftest import write_nifti
from workflows.bids import (
    SessionInputs,
    collect_inputs,
    index_dataset,
    list_subject_sessions,
    read_participants,
    read_sessions_table,
)


@pytest.fixture
def layout(tiny_bids):
    return index_dataset(tiny_bids, derivatives=[tiny_bids / "derivatives" / "lesions"])


# ------------------------------------------------------------------ indexing
def test_indexing_raises_no_warnings(tiny_bids):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layout = index_dataset(tiny_bids, derivatives=[tiny_bids / "derivatives" / "lesions"])
        inputs = collect_inputs(layout, "01", "m00")
    assert sorted(layout.get_subjects()) == ["01", "02"]
    assert inputs.lesion_mask is not None


def test_missing_bids_dir(tmp_path):
    path = tmp_path / "nowhere"
    with pytest.raises(InputError, match="directory not found") as exc:
        index_dataset(path)
    assert str(path) in str(exc.value)


def test_missing_dataset_description(tiny_bids):
    desc = tiny_bids / "dataset_description.json"
    desc.unlink()
    with pytest.raises(InputError, match=r"dataset_description\.json") as exc:
        index_dataset(tiny_bids)
    assert str(desc) in str(exc.value)


def test_derivatives_without_description(tiny_bids):
    deriv = tiny_bids / "derivatives" / "lesions"
    (deriv / "dataset_description.json").unlink()
    with pytest.raises(InputError, match="BIDS derivatives dataset") as exc:
        index_dataset(tiny_bids, derivatives=[deriv])
    assert str(deriv / "dataset_description.json") in str(exc.value)


def test_derivatives_without_generated_by(tiny_bids):
    desc = tiny_bids / "derivatives" / "lesions" / "dataset_description.json"
    desc.write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    with pytest.raises(InputError, match="GeneratedBy") as exc:
        index_dataset(tiny_bids, derivatives=[desc.parent])
    assert str(desc) in str(exc.value)


def test_derivatives_declared_raw_or_a_file_are_rejected(tiny_bids, tmp_path):
    desc = tiny_bids / "derivatives" / "lesions" / "dataset_description.json"
    desc.write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0", "DatasetType": "raw",
                                "GeneratedBy": [{"Name": "manual"}]}))
    with pytest.raises(
        InputError, match='expected "DatasetType": "derivative", got \'raw\''
    ) as exc:
        index_dataset(tiny_bids, derivatives=[desc.parent])
    assert str(desc) in str(exc.value)
    not_a_dir = tmp_path / "lesions.txt"
    not_a_dir.write_text("")
    with pytest.raises(InputError, match="got a file") as exc:
        index_dataset(tiny_bids, derivatives=[not_a_dir])
    assert str(not_a_dir) in str(exc.value)


def test_derivatives_not_indexed_by_default(tiny_bids):
    layout = index_dataset(tiny_bids)
    inputs = collect_inputs(layout, "01", "m00")
    assert inputs.lesion_mask is None
    assert any("none were indexed" in m for m in inputs.missing)


# ------------------------------------------------------------- subjects/sessions
def test_list_all_subject_sessions(layout):
    assert list_subject_sessions(layout) == [
        ("01", "m00"),
        ("01", "m03"),
        ("02", "m00"),
        ("02", "m03"),
    ]


def test_participant_and_session_filters(layout):
    assert list_subject_sessions(layout, participant_label="sub-02") == [
        ("02", "m00"),
        ("02", "m03"),
    ]
    both = list_subject_sessions(layout, participant_label=["01", "sub-02"], session_label="m03")
    assert both == [("01", "m03"), ("02", "m03")]
    prefixed = list_subject_sessions(layout, participant_label="sub-01", session_label="ses-m03")
    assert prefixed == [("01", "m03")]
    assert list_subject_sessions(layout, participant_label="01", session_label=["m00"]) == [
        ("01", "m00")
    ]


def test_unknown_participant(layout, tiny_bids):
    with pytest.raises(InputError, match="sub-07 not found") as exc:
        list_subject_sessions(layout, participant_label="07")
    assert str(tiny_bids) in str(exc.value)


def test_unknown_session(layout):
    with pytest.raises(InputError, match="ses-m12 not found"):
        list_subject_sessions(layout, session_label="m12")


# ------------------------------------------------------------------ inputs
def test_collect_complete_session(layout, tiny_bids):
    inputs = collect_inputs(layout, "sub-01", "ses-m00")
    anat = tiny_bids / "sub-01" / "ses-m00" / "anat"
    dwi = tiny_bids / "sub-01" / "ses-m00" / "dwi"
    assert isinstance(inputs, SessionInputs)
    assert (inputs.subject, inputs.session) == ("01", "m00")
    assert inputs.t1w == anat / "sub-01_ses-m00_T1w.nii.gz"
    assert inputs.flair == anat / "sub-01_ses-m00_FLAIR.nii.gz"
    assert inputs.dwi == dwi / "sub-01_ses-m00_dwi.nii.gz"
    assert inputs.dwi_bval == dwi / "sub-01_ses-m00_dwi.bval"
    assert inputs.dwi_bvec == dwi / "sub-01_ses-m00_dwi.bvec"
    assert inputs.dwi_json == dwi / "sub-01_ses-m00_dwi.json"
    func = tiny_bids / "sub-01" / "ses-m00" / "func"
    assert inputs.bold == func / "sub-01_ses-m00_task-rest_bold.nii.gz"
    assert inputs.bold_json == func / "sub-01_ses-m00_task-rest_bold.json"
    assert inputs.lesion_mask == (
        tiny_bids
        / "derivatives"
        / "lesions"
        / "sub-01"
        / "ses-m00"
        / "anat"
        / "sub-01_ses-m00_space-FLAIR_label-lesion_mask.nii.gz"
    )
    assert inputs.lesion_space == "FLAIR"
    assert inputs.missing == () and inputs.notes == ()


def test_session_without_flair(layout):
    inputs = collect_inputs(layout, "01", "m03")
    assert inputs.flair is None
    assert inputs.missing == ("FLAIR: no sub-01_ses-m03_FLAIR.nii.gz found in sub-01/ses-m03/anat",)
    for field in ("t1w", "dwi", "dwi_bval", "dwi_bvec", "bold", "bold_json", "lesion_mask"):
        assert getattr(inputs, field) is not None, field
        assert getattr(inputs, field).is_file()


def test_session_without_bold(layout):
    inputs = collect_inputs(layout, "02", "m03")
    assert inputs.bold is None and inputs.bold_json is None
    assert inputs.missing == (
        "BOLD: no sub-02_ses-m03_task-rest_bold.nii.gz found in sub-02/ses-m03/func",
    )
    assert inputs.t1w is not None and inputs.flair is not None and inputs.dwi is not None
    assert inputs.lesion_space == "FLAIR"


def test_missing_t1w_is_reported_not_raised(make_bids):
    root = make_bids(omit={("01", "m00"): {"T1w", "dwi", "lesion"}})
    layout = index_dataset(root, derivatives=[root / "derivatives" / "lesions"])
    inputs = collect_inputs(layout, "01", "m00")
    assert inputs.t1w is None and inputs.dwi is None and inputs.lesion_mask is None
    assert inputs.missing[0] == "T1w: no sub-01_ses-m00_T1w.nii.gz found in sub-01/ses-m00/anat"
    assert inputs.missing[1].startswith("DWI: no sub-01_ses-m00_dwi.nii.gz")
    assert inputs.missing[2].startswith("lesion mask: no sub-01_ses-m00_space-<T1w|FLAIR>")


def test_lesion_mask_in_t1w_space(make_bids):
    root = make_bids(lesion_space="T1w")
    layout = index_dataset(root, derivatives=[root / "derivatives" / "lesions"])
    inputs = collect_inputs(layout, "02", "m00")
    assert inputs.lesion_space == "T1w"
    assert inputs.lesion_mask.name == "sub-02_ses-m00_space-T1w_label-lesion_mask.nii.gz"


def test_lesion_mask_in_unsupported_space(make_bids):
    root = make_bids(lesion_space="MNI152NLin2009cAsym")
    layout = index_dataset(root, derivatives=[root / "derivatives" / "lesions"])
    with pytest.raises(InputError, match="space-T1w or space-FLAIR") as exc:
        collect_inputs(layout, "01", "m00")
    assert "sub-01_ses-m00_space-MNI152NLin2009cAsym_label-lesion_mask.nii.gz" in str(exc.value)


def test_several_runs_take_first_and_note(tiny_bids):
    anat = tiny_bids / "sub-02" / "ses-m00" / "anat"
    (anat / "sub-02_ses-m00_T1w.nii.gz").rename(anat / "sub-02_ses-m00_run-2_T1w.nii.gz")
    write_nifti(anat / "sub-02_ses-m00_run-1_T1w.nii.gz")
    write_nifti(anat / "sub-02_ses-m00_ce-gadolinium_run-1_T1w.nii.gz")
    layout = index_dataset(tiny_bids, derivatives=[tiny_bids / "derivatives" / "lesions"])
    inputs = collect_inputs(layout, "02", "m00")
    assert inputs.t1w == anat / "sub-02_ses-m00_run-1_T1w.nii.gz"
    assert inputs.missing == ()
    assert len(inputs.notes) == 1 and inputs.notes[0].startswith("T1w: 3 files match")


def test_inherited_bold_sidecar(tiny_bids):
    func = tiny_bids / "sub-02" / "ses-m00" / "func"
    (func / "sub-02_ses-m00_task-rest_bold.json").unlink()
    top = tiny_bids / "task-rest_bold.json"
    top.write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"}))
    layout = index_dataset(tiny_bids)
    assert collect_inputs(layout, "02", "m00").bold_json == top


def test_missing_bval_reported(tiny_bids):
    bval = tiny_bids / "sub-01" / "ses-m00" / "dwi" / "sub-01_ses-m00_dwi.bval"
    bval.unlink()
    layout = index_dataset(tiny_bids, derivatives=[tiny_bids / "derivatives" / "lesions"])
    inputs = collect_inputs(layout, "01", "m00")
    assert inputs.dwi is not None and inputs.dwi_bval is None
    assert inputs.missing == (
        "DWI b-values: no sub-01_ses-m00_dwi.bval found for sub-01_ses-m00_dwi.nii.gz",
    )


def test_collect_unknown_session(layout):
    with pytest.raises(InputError, match="ses-m06 not found for participant sub-01"):
        collect_inputs(layout, "01", "m06")


# ------------------------------------------------------------------ tables
def test_read_sessions_table(layout, tiny_bids):
    expected = [
        {"session_id": "ses-m00", "months": "00"},
        {"session_id": "ses-m03", "months": "03"},
    ]
    assert read_sessions_table(layout, "sub-01") == expected
    assert read_sessions_table(tiny_bids, "01") == expected
    (tiny_bids / "sub-02" / "sub-02_sessions.tsv").unlink()
    assert read_sessions_table(tiny_bids, "02") == []


def test_read_participants(tiny_bids):
    assert read_participants(tiny_bids) == [
        {"participant_id": "sub-01", "age": "30", "group": "treated"},
        {"participant_id": "sub-02", "age": "31", "group": None},
    ]


def test_malformed_participants(tiny_bids):
    path = tiny_bids / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t30\textra\n")
    with pytest.raises(InputError, match="line 2: expected 2 tab-separated values, got 3") as exc:
        read_participants(tiny_bids)
    assert str(path) in str(exc.value)


def test_no_participants_file(tmp_path):
    assert read_participants(Path(tmp_path)) == []

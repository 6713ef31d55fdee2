"""The results API (workflows.results) on a small synthetic derivatives folder.

The folder is written by the project's own writer (``DerivativesWriter``), so the
names are the naming specification's. Two subjects: sub-01 with sessions
``screening`` and ``baseline`` (configured in that order, the reverse of the
alphabetical one) and the anat, dwi and func stages at screening, anat and an
excluded fMRI run at baseline; sub-02 with anat only. No tract stage anywhere.

:func:`execute_notebook` is shared with the integration test in test_dwi_workflow.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputError
from workflows.derivatives import DerivativesWriter
from workflows.results import (
    MEASURE_ALIASES,
    DerivativesResults,
    MissingOutputError,
    read_tsv,
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inspect_subject.ipynb"
CONFIG = {"sessions": {"order": ["screening", "baseline"],
                       "months": {"screening": -1.0, "baseline": 0.0}},
          "bids": {"bold_task": "rest"}, "func": {"atlas": "toy"}}
REGIONS = ["toy_001", "toy_002", "toy_003", "toy_004"]
METRICS = ("fa", "md", "ad", "rd")


def _roi_table(sub: str, ses: str, rd_left: float) -> pd.DataFrame:
    rows = []
    for roi in ("WM", "NAWM", "NAWM_L", "NAWM_R"):
        for m, value in zip(
            METRICS, (0.5, 0.8, 1.3, rd_left if roi == "NAWM_L" else 0.52), strict=True
        ):
            rows.append({"subject": sub, "session": ses, "roi": roi, "metric": m,
                         "units": "unitless" if m == "fa" else "um^2/ms", "n_voxels": 100,
                         "mean": value, "median": value, "sd": 0.01,
                         "lesion_loss_fraction": np.nan})
    return pd.DataFrame(rows)


def _summary(sub: str, ses: str, *, excluded: bool) -> pd.DataFrame:
    return pd.DataFrame([{"subject": sub, "session": ses, "task": "rest", "repetition_time_s": 2.0,
                          "n_volumes": 100, "mean_fd_mm": 0.12, "max_fd_mm": 0.6,
                          "n_censored": 2, "excluded": int(excluded),
                          "exclusion_reason": "too much motion" if excluded else np.nan}])


@pytest.fixture
def deriv(tmp_path: Path) -> Path:
    out = tmp_path / "derivatives"
    w = DerivativesWriter(out, config=CONFIG)
    rng = np.random.default_rng(0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for sub, sessions in (("01", ("screening", "baseline")), ("02", ("baseline",))):
        for ses in sessions:
            ent = {"sub": sub, "ses": ses}
            meta = w.provenance(sources=["bids/x.nii.gz"], seed=7, extra={"Description": "t"})
            w.write_tsv(pd.DataFrame([{"icv_mm3": 1.5e6, "lesion_mm3": 1200.0 if ses == "baseline"
                                       else 1000.0, "brain_fraction_icv": 0.85}]),
                        meta=meta, datatype="anat", suffix="volumes", **ent)
            w.write_tsv(pd.DataFrame({"lesion_id": [1, 2], "volume_mm3": [600.0, 400.0]}),
                        datatype="anat", suffix="lesions", **ent)
        if sub != "01":
            continue
        dwi = {"sub": sub, "ses": "screening", "datatype": "dwi", "space": "dwi"}
        for m in METRICS:
            img = nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), affine)
            w.write_nifti(img, meta=meta, **dwi, model="tensor", param=m, suffix="dwimap")
        w.write_nifti(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), affine), **dwi,
                      desc="NAWML", suffix="mask")
        w.write_tsv(_roi_table(sub, "screening", 0.50), meta=meta, **dwi, model="tensor",
                    suffix="roistats")
        conf = pd.DataFrame({"framewise_displacement": [0.0, 0.2, 0.4], "motion_outlier": [0, 0, 1],
                             "dropout_outlier": [0, 0, 0]})
        w.write_tsv(conf, datatype="dwi", sub=sub, ses="screening", desc="confounds",
                    suffix="timeseries")
        func = {"sub": sub, "ses": "screening", "datatype": "func", "task": "rest"}
        labels = pd.DataFrame({"index": [1, 2, 3, 4], "name": REGIONS, "network": ["A", "A", "B", "B"],
                               "valid": [1, 1, 1, 0]})
        w.write_tsv(labels, **func, seg="toy", suffix="dseg")
        m = np.corrcoef(rng.standard_normal((4, 20)))
        m[3, :] = m[:, 3] = np.nan
        mat = pd.DataFrame(m, index=pd.Index(REGIONS, name="label"), columns=REGIONS)
        w.write_tsv(mat, index=True, meta={"RelationshipMeasure": "pearsoncorrelation"}, **func,
                    seg="toy", stat="pearsoncorrelation", suffix="relmat")
        w.write_tsv(
            _summary(sub, "screening", excluded=False), **func, desc="summary", suffix="bold"
        )
        w.write_tsv(_summary(sub, "baseline", excluded=True), **{**func, "ses": "baseline"},
                    desc="summary", suffix="bold")
        w.write_tsv(_roi_table(sub, "baseline", 0.55), **{**dwi, "ses": "baseline"}, model="tensor",
                    suffix="roistats")
        w.write_text("<svg/>", sub=sub, ses="screening", datatype="figures", desc="fa",
                     suffix="dwi", extension=".svg")
        # an in-progress atomic write: hidden, must never be seen
        (out / "sub-01/ses-screening/dwi/.sub-01_ses-screening_space-dwi_model-tensor_tractstats"
         ".tmp.tsv").write_text("x\n")
    w.write_tsv(pd.DataFrame({"roi": ["NAWM_L"], "p": [0.04]}), datatype="group",
                suffix="dwistats", desc="tests")
    return out


# --------------------------------------------------------------------------- dataset


def test_subjects_and_sessions_in_configured_time_order(deriv):
    res = DerivativesResults(deriv)
    assert res.subjects == ["01", "02"]
    assert res.sessions("sub-01") == ["screening", "baseline"]  # config order, not alphabetical
    assert res.session("01").session == "screening"
    assert res["01", "baseline"] is res.session("01", "ses-baseline")
    assert res.months("screening") == -1.0


def test_not_a_derivatives_dataset_names_the_folder(tmp_path, deriv):
    with pytest.raises(InputError, match="BIDS derivatives dataset directory not found") as exc:
        DerivativesResults(tmp_path / "nowhere")
    assert exc.value.path == str(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"dataset_description\.json at its root") as exc:
        DerivativesResults(tmp_path)
    assert str(tmp_path) in str(exc.value)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.9.0"}))
    with pytest.raises(InputError, match='"DatasetType": "derivative"') as exc:
        DerivativesResults(raw)
    assert str(raw) in str(exc.value)


def test_unknown_subject_or_session_names_the_folder_and_what_exists(deriv):
    res = DerivativesResults(deriv)
    with pytest.raises(InputError, match=r"sub-07 not found .*available: sub-01, sub-02") as exc:
        res.session("07")
    assert exc.value.path == str(deriv)
    with pytest.raises(InputError, match=r"ses-m12 not found for sub-02; available: ses-baseline"):
        res.session("02", "m12")
    with pytest.raises(InputError, match="sub-07 not found"):
        DerivativesResults(deriv, participant_label=["07"])


def test_participant_label_indexes_only_that_subject(deriv):
    res = DerivativesResults(deriv, participant_label="sub-02")
    assert res.subjects == ["02"]
    assert res.session("02").volumes()["icv_mm3"].tolist() == [1.5e6]


# --------------------------------------------------------------------------- outputs


def test_map_and_tables_equal_the_files(deriv):
    ses = DerivativesResults(deriv).session("01", "screening")
    folder = deriv / "sub-01/ses-screening/dwi"
    fa = ses.map("fa")
    path = folder / "sub-01_ses-screening_space-dwi_model-tensor_param-fa_dwimap.nii.gz"
    np.testing.assert_array_equal(fa.get_fdata(), nib.load(path).get_fdata())
    np.testing.assert_array_equal(fa.affine, nib.load(path).affine)
    assert ses.mask("NAWM_L").shape == fa.shape
    roi = ses.roi_table()
    ref = pd.read_csv(folder / "sub-01_ses-screening_space-dwi_model-tensor_roistats.tsv", sep="\t",
                      dtype={"subject": str, "session": str})
    pd.testing.assert_frame_equal(roi, ref)
    assert roi["subject"].tolist()[0] == "01"  # not the integer 1
    nawm = ses.roi_table(rois=["NAWM_L", "NAWM_R"], metrics="rd")
    assert nawm[["roi", "metric"]].values.tolist() == [["NAWM_L", "rd"], ["NAWM_R", "rd"]]
    with pytest.raises(ValueError, match=r"no roi \['CST'\].*available"):
        ses.roi_table(rois=["CST"])
    assert ses.volumes()["lesion_mm3"].tolist() == [1000.0]
    assert len(ses.lesions()) == 2


def test_connectome_labels_travel_with_the_matrix(deriv):
    ses = DerivativesResults(deriv).session("01", "screening")
    conn = ses.connectome()  # the only atlas; measure by entity name
    assert (conn.atlas, conn.measure, conn.shape) == ("toy", "pearsoncorrelation", (4, 4))
    assert conn.regions == REGIONS
    assert list(conn.matrix.index) == list(conn.matrix.columns) == list(conn.labels["name"])
    assert conn.labels["valid"].tolist() == [1, 1, 1, 0]
    assert np.isnan(conn.matrix.loc["toy_004"]).all()
    assert conn.metadata["RelationshipMeasure"] == "pearsoncorrelation"
    assert ses.connectome("toy", "correlation").path == conn.path  # configuration name accepted
    assert ses.atlases() == ["toy"] and ses.measures() == ["pearsoncorrelation"]


def test_connectome_whose_labels_differ_from_the_table_is_an_error(deriv):
    path = deriv / "sub-01/ses-screening/func/sub-01_ses-screening_task-rest_seg-toy_dseg.tsv"
    table = read_tsv(path)
    table.loc[1, "name"] = "toy_099"
    table.to_csv(path, sep="\t", index=False)
    with pytest.raises(InputError, match="expected row and column labels equal") as exc:
        DerivativesResults(deriv).session("01", "screening").connectome()
    assert exc.value.path.endswith("stat-pearsoncorrelation_relmat.tsv")


def test_missing_output_names_the_file_and_the_stage(deriv):
    res = DerivativesResults(deriv)
    ses = res.session("01", "screening")
    assert ses.stages == {
        "inventory": False,
        "anat": True,
        "dwi": True,
        "tract": False,
        "func": True,
    }
    with pytest.raises(
        MissingOutputError, match=r"tract table not found; the 'tract' stage"
    ) as exc:
        ses.tract_table()  # the hidden temporary file does not count
    assert exc.value.stage == "tract"
    assert exc.value.path.endswith(
        "sub-01/ses-screening/dwi/sub-01_ses-screening_space-dwi_model-tensor_tractstats.tsv"
    )
    assert "--stages tract" in str(exc.value)
    with pytest.raises(MissingOutputError, match="FA map") as exc:
        res.session("02").map("fa")
    assert exc.value.stage == "dwi" and "param-fa_dwimap.nii.gz" in exc.value.path
    with pytest.raises(MissingOutputError) as exc:
        res.session("02").connectome()
    assert exc.value.stage == "func"
    with pytest.raises(MissingOutputError, match="'dwi_stats' stage") as exc:
        res.group_table("dwistats", desc="sessions")
    assert exc.value.stage == "dwi_stats" and "group --stages dwi_stats" in str(exc.value)


def test_missing_matrix_of_an_excluded_run_says_why(deriv):
    ses = DerivativesResults(deriv).session("01", "baseline")
    with pytest.raises(MissingOutputError, match=r"run was excluded \(too much motion\)"):
        ses.connectome("toy")
    other = DerivativesResults(deriv).session("01", "screening")
    with pytest.raises(MissingOutputError, match="written: seg-toy stat-pearsoncorrelation"):
        other.connectome("toy", "fisherz")


def test_longitudinal_tables_and_motion(deriv):
    res = DerivativesResults(deriv)
    rd = res.longitudinal("01", "roi_table", rois=["NAWM_L"], metrics=["rd"])
    assert rd[["session", "time_months", "mean"]].values.tolist() == [
        ["screening", -1.0, 0.50], ["baseline", 0.0, 0.55]]
    vols = res.longitudinal("02", "volumes")
    assert vols["session"].tolist() == ["baseline"]
    motion = res.longitudinal("01", "motion_summary")
    assert motion[["session", "modality", "n_flagged", "excluded"]].values.tolist() == [
        ["screening", "dwi", 1, False], ["screening", "bold (task-rest)", 2, False],
        ["baseline", "bold (task-rest)", 2, True]]
    with pytest.raises(MissingOutputError, match="tract"):
        res.longitudinal("01", "tract_profiles")
    with pytest.raises(ValueError, match="unknown table"):
        res.longitudinal("01", "map")


def test_group_figures_provenance_and_summary(deriv):
    res = DerivativesResults(deriv)
    assert res.group_table("dwistats")["p"].tolist() == [0.04]
    ses = res.session("01", "screening")
    assert ses.figures() == {"desc-fa_dwi": deriv / "sub-01/ses-screening/figures/"
                             "sub-01_ses-screening_desc-fa_dwi.svg"}
    prov = ses.provenance("sub-01_ses-screening_space-dwi_model-tensor_param-fa_dwimap.nii.gz")
    assert prov["RandomSeed"] == 7 and prov["Sources"][0].endswith("bids/x.nii.gz")
    assert res.provenance("sub-01/ses-screening/anat/sub-01_ses-screening_volumes.tsv") == prov
    with pytest.raises(InputError, match="provenance sidecar"):
        ses.provenance(ses.files(suffix="lesions")[0])
    summary = ses.summary()
    assert summary["NAWM_L_rd"] == 0.50 and summary["func_excluded"] is False
    assert summary["stages"]["tract"] is False and summary["n_figures"] == 1


def test_refresh_sees_files_written_after_indexing(deriv):
    res = DerivativesResults(deriv)
    ses = res.session("02")
    assert not ses.has("dwi")
    w = DerivativesWriter(deriv, config=CONFIG)
    w.write_tsv(_roi_table("02", "baseline", 0.5), datatype="dwi", sub="02", ses="baseline",
                space="dwi", model="tensor", suffix="roistats")
    res.refresh()
    assert res.session("02").has("dwi")


def test_measure_aliases_agree_with_the_func_stage():
    from workflows.func import MEASURE_STATS

    assert {k: v[1] for k, v in MEASURE_STATS.items()} == MEASURE_ALIASES


# --------------------------------------------------------------------------- notebook


def test_notebook_is_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])
    assert nb.metadata["kernelspec"]["name"] == "python3"


def execute_notebook(tmp_path: Path, env: dict[str, str], *, timeout: int = 600):
    """Run notebooks/inspect_subject.ipynb top to bottom; return (notebook, text, seconds).

    The kernel is this interpreter (``sys.executable``): a kernelspec written by
    ipykernel into ``tmp_path`` and put first on ``JUPYTER_PATH``, so a python3
    kernelspec elsewhere (user or system Jupyter folders) can never be picked up.
    ``env`` (``MSMRI_OUTPUT_DIR`` ...) is passed to the kernel through the environment.
    ``text`` joins every stream and text/plain output.
    """
    import time

    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from nbclient import NotebookClient

    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "msmri-test")
    saved = {k: os.environ.get(k) for k in (*env, "JUPYTER_PATH")}
    os.environ.update(env)
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(tmp_path / "jupyter"), *filter(None, [saved["JUPYTER_PATH"]])]
    )
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, startup_timeout=120, kernel_name="msmri-test",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return nb, "\n".join(parts), seconds


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_notebook_runs_when_optional_stages_were_not_run(deriv, tmp_path):
    """No tract stage anywhere, no fMRI matrix at baseline: the notebook says so and goes on."""
    nb, text, seconds = execute_notebook(
        tmp_path,
        {"MSMRI_OUTPUT_DIR": str(deriv), "MSMRI_SUBJECT": "01", "MSMRI_SESSION": "baseline"},
    )
    print(f"notebook executed in {seconds:.1f} s ({sys.executable})\n{text}")
    assert "sub-01: sessions screening, baseline; showing ses-baseline" in text
    assert "tract stage not run" in text
    assert "dwi stage not run for sub-01 ses-baseline: no FA map" not in text  # roistats there
    assert "no connectome:" in text and "run was excluded (too much motion)" in text
    assert "NAWM RD (um^2/ms), sub-01:" in text and "10.0" in text  # +10 % on the left
    assert _images(nb) >= 1

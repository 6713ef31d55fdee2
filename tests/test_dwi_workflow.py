"""Diffusion and tract stages end to end on the tiny phantom (Nipype workflows via the CLI).

One subject, both sessions: structural stage, then the diffusion stage, then
tractography and tractometry, and the fMRI stage with the tiny phantom's settings
(``TINY_FUNC_CONFIG``), so the fixture holds a complete participant output that the
report and notebook tests read. The accuracy checks compare the ROI table with the phantom's truth maps in ROIs
built from the truth tissue maps (independently of our registrations).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.dwi.rois import build_rois
from pipeline.phantom.trial import PRESETS, make_subject
from tests.conftest import TINY_FUNC_CONFIG
from workflows.dwi import TENSOR_MAPS

SPEC = PRESETS["tiny"]
BASE, FOLLOW = SPEC.sessions


@pytest.fixture(scope="module")
def dwi_run(tmp_path_factory):
    from workflows.cli import main
    from workflows.synth import write_trial

    root = tmp_path_factory.mktemp("dwi")
    write_trial(root, SPEC, subjects=[0])
    out = root / "derivatives"
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY_FUNC_CONFIG)
    assert main([str(root / "bids"), str(out), "participant", "--participant-label", "01",
                 "--stages", "inventory", "anat", "dwi", "tract", "func", "--config", str(cfg),
                 "--work-dir", str(root / "work"), "--nprocs", "2"]) == 0
    return root, out


def _dwi(out: Path, ses: str, name: str) -> Path:
    return out / f"sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_{name}"


def _truth(root: Path, ses: str, name: str) -> np.ndarray:
    path = root / f"truth/sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_{name}.nii.gz"
    return np.asanyarray(nib.load(path).dataobj)


def _table(out: Path, ses: str) -> pd.DataFrame:
    return pd.read_csv(_dwi(out, ses, "space-dwi_model-tensor_roistats.tsv"), sep="\t")


def _truth_medians(root: Path, ses: str) -> dict[tuple[str, str], float]:
    """Median truth FA/MD/AD/RD (um^2/ms) in NAWM ROIs built from the truth tissue maps."""
    aff = nib.load(
        root / f"truth/sub-01/ses-{ses}/dwi/sub-01_ses-{ses}_space-dwi_desc-brain_mask.nii.gz"
    ).affine
    rois = build_rois(
        _truth(root, ses, "space-dwi_label-WM_probseg"),
        _truth(root, ses, "space-dwi_label-lesion_probseg") >= 0.5,
        _truth(root, ses, "space-dwi_desc-hemi_dseg"),
        voxel_size_mm=np.sqrt((aff[:3, :3] ** 2).sum(axis=0)),
    )
    out = {}
    for metric in ("fa", "md", "ad", "rd"):
        arr = _truth(root, ses, f"space-dwi_model-tensor_param-{metric}_dwimap")
        scale = 1.0 if metric == "fa" else 1e3
        for roi in ("NAWM_L", "NAWM_R"):
            out[roi, metric] = float(np.median(arr[rois[roi]])) * scale
    return out


def _ours(table: pd.DataFrame, roi: str, metric: str) -> float:
    row = table[(table["roi"] == roi) & (table["metric"] == metric)]
    assert len(row) == 1, (roi, metric)
    return float(row["median"].iloc[0])


@pytest.mark.integration
def test_outputs_exist_with_provenance(dwi_run):
    _, out = dwi_run
    for name in TENSOR_MAPS:
        path = _dwi(out, BASE, f"space-dwi_model-tensor_param-{name}_dwimap.nii.gz")
        assert path.exists(), path
        meta = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
        assert meta["Sources"] and meta["Parameters"]["tensor"]["method"] == "WLS"
    for name in ("space-dwi_desc-preproc_dwi.nii.gz", "space-dwi_desc-preproc_dwi.bval",
                 "space-dwi_desc-preproc_dwi.bvec", "space-dwi_desc-brain_mask.nii.gz",
                 "space-dwi_model-mppca_param-noise_dwimap.nii.gz",
                 "desc-confounds_timeseries.tsv", "from-dwi_to-T1w_mode-image_xfm.json",
                 "space-dwi_desc-NAWML_mask.nii.gz", "space-dwi_desc-perilesion_mask.nii.gz"):
        assert _dwi(out, BASE, name).exists(), name
    figures = sorted(p.name for p in (out / f"sub-01/ses-{BASE}/figures").glob("*_dwi.svg"))
    assert len(figures) == 5, figures
    conf = pd.read_csv(_dwi(out, BASE, "desc-confounds_timeseries.tsv"), sep="\t")
    assert len(conf) == 33 and {"framewise_displacement", "rot_z", "bval"} <= set(conf.columns)
    # no NaN or Inf anywhere in the maps
    fa = nib.load(_dwi(out, BASE, "space-dwi_model-tensor_param-fa_dwimap.nii.gz")).get_fdata()
    assert np.all(np.isfinite(fa)) and fa.min() >= 0 and fa.max() <= 1


@pytest.mark.integration
@pytest.mark.parametrize("ses", [BASE, FOLLOW])
def test_nawm_tensor_metrics_match_truth(dwi_run, ses):
    root, out = dwi_run
    table, truth = _table(out, ses), _truth_medians(root, ses)
    for (roi, metric), true in truth.items():
        rel = _ours(table, roi, metric) / true - 1
        print(
            f"ses-{ses} {roi} {metric}: ours {_ours(table, roi, metric):.4f} truth {true:.4f} ({rel:+.1%})"
        )
        assert abs(rel) < 0.05, (roi, metric, rel)


@pytest.mark.integration
def test_planted_rd_change_is_recovered_only_on_the_left(dwi_run):
    _, out = dwi_run
    base, follow = _table(out, BASE), _table(out, FOLLOW)
    change = {
        roi: _ours(follow, roi, "rd") / _ours(base, roi, "rd") - 1 for roi in ("NAWM_L", "NAWM_R")
    }
    print("RD change", change)
    assert abs(change["NAWM_L"] - SPEC.rd_change[-1]) < 0.015, change
    assert abs(change["NAWM_R"]) < 0.015, change


@pytest.mark.integration
def test_dwi_to_t1w_transform_matches_truth(dwi_run):
    from pipeline.registration import Transform

    _, out = dwi_run
    subject = make_subject(SPEC, 0)
    xfm = Transform.load(_dwi(out, FOLLOW, "from-dwi_to-T1w_mode-image_xfm.json"))
    mask = nib.load(_dwi(out, FOLLOW, "space-dwi_desc-brain_mask.nii.gz"))
    ijk = np.argwhere(np.asanyarray(mask.dataobj) > 0)[::50]
    pts = nib.affines.apply_affine(mask.affine, ijk)
    ours = xfm.source_to_target(pts)
    truth = subject.from_template(FOLLOW, "T1w")(subject.to_template(FOLLOW, "dwi")(pts))
    err = np.linalg.norm(ours - truth, axis=1)
    print(f"dwi -> T1w error: median {np.median(err):.2f} mm, max {err.max():.2f} mm")
    assert np.median(err) < 1.0 and err.max() < 2.0


@pytest.mark.integration
def test_mrtrix_agrees_on_the_preprocessed_series(dwi_run, tmp_path):
    """dwi2tensor + tensor2metric on our preprocessed series and mask (same data)."""
    if shutil.which("dwi2tensor") is None:
        if os.environ.get("CI"):
            pytest.fail("MRtrix3 (dwi2tensor) is required in CI")
        pytest.skip("MRtrix3 not installed")
    _, out = dwi_run
    pre = _dwi(out, BASE, "space-dwi_desc-preproc_dwi")
    mask = _dwi(out, BASE, "space-dwi_desc-brain_mask.nii.gz")
    meta = json.loads(_dwi(out, BASE, "space-dwi_model-tensor_param-fa_dwimap.json").read_text())
    keep = ",".join(str(k) for k in meta["Parameters"]["tensor"]["volumes_fitted"])
    series = tmp_path / "dwi.mif"  # the volumes our fit used, with their rotated gradients
    subprocess.run(["mrconvert", "-quiet", "-force", "-fslgrad", f"{pre}.bvec", f"{pre}.bval",
                    "-coord", "3", keep, f"{pre}.nii.gz", str(series)], check=True)
    tensor = tmp_path / "dt.mif"
    subprocess.run(["dwi2tensor", "-quiet", "-force", "-mask", str(mask), str(series), str(tensor)],
                   check=True)
    subprocess.run(["tensor2metric", "-quiet", "-force", "-mask", str(mask), str(tensor),
                    "-fa", str(tmp_path / "fa.nii"), "-adc", str(tmp_path / "md.nii")], check=True)
    m = np.asanyarray(nib.load(mask).dataobj) > 0
    ours_fa = nib.load(
        _dwi(out, BASE, "space-dwi_model-tensor_param-fa_dwimap.nii.gz")
    ).get_fdata()[m]
    ours_md = nib.load(
        _dwi(out, BASE, "space-dwi_model-tensor_param-md_dwimap.nii.gz")
    ).get_fdata()[m]
    mr_fa = nib.load(tmp_path / "fa.nii").get_fdata()[m]
    mr_md = nib.load(tmp_path / "md.nii").get_fdata()[m]
    ok = np.isfinite(mr_fa) & np.isfinite(mr_md) & (mr_md > 0)
    dfa = np.median(np.abs(ours_fa[ok] - mr_fa[ok]))
    dmd = np.median(np.abs(ours_md[ok] / mr_md[ok] - 1))
    print(f"ours vs MRtrix3 on the preprocessed series: median |dFA| {dfa:.4f}, |dMD| {dmd:.2%}")
    assert dfa < 0.01 and dmd < 0.02


@pytest.mark.integration
def test_atlas_rois_from_mni_are_warped_into_dwi_space(dwi_run, tmp_path):
    """A user label image in MNI space (here: template WM split by hemisphere) becomes ROIs."""
    from pipeline.config import load_config
    from pipeline.templates import load_mni_template
    from workflows.dwi import DwiRois, _node_params, structural_inputs

    _, out = dwi_run
    tpl = load_mni_template(2)
    labels = np.where(tpl.wm > 0.5, tpl.hemisphere, 0).astype(np.int16)
    atlas = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(labels, tpl.affine), atlas)
    tsv = tmp_path / "atlas.tsv"
    tsv.write_text("index\tname\n1\tatlasWML\n2\tatlasWMR\n")
    cfg = tmp_path / "atlas.yaml"
    cfg.write_text(f"dwi:\n  atlas: {atlas}\n  atlas_labels: {tsv}\n")
    config = load_config([cfg]).to_dict()
    anat = structural_inputs(out, "01", BASE)
    maps = {m: str(_dwi(out, BASE, f"space-dwi_model-tensor_param-{m}_dwimap.nii.gz"))
            for m in ("fa", "md", "ad", "rd")}
    node = DwiRois(maps=maps, mask=str(_dwi(out, BASE, "space-dwi_desc-brain_mask.nii.gz")),
                   xfm=str(_dwi(out, BASE, "from-dwi_to-T1w_mode-image_xfm.json")),
                   wm_prob=anat["wm"], lesion=anat["lesion"], hemisphere=anat["hemisphere"],
                   mni_xfm=anat["mni_xfm"], params=_node_params(config)["rois"])
    res = node.run(cwd=str(tmp_path))
    table = pd.read_csv(res.outputs.table, sep="\t")
    assert {"atlasWML", "atlasWMR"} <= set(table["roi"])
    rois = {k: np.asanyarray(nib.load(v).dataobj) > 0 for k, v in res.outputs.rois.items()}
    for side in "LR":
        a, b = rois[f"atlasWM{side}"], rois[f"WM_{side}"]
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.6, (side, dice)  # template WM vs the subject's own WM segmentation
        assert not (a & rois["WM_L" if side == "R" else "WM_R"]).sum() > 0.02 * a.sum()
    assert res.outputs.parameters["atlas_rois"] == ["atlasWML", "atlasWMR"]


# --------------------------------------------------------------------------- tract stage

BUNDLES = ("CST_L", "CST_R", "OR_L", "OR_R", "CC", "ForcepsMinor", "CC_Body", "ForcepsMajor")


def _tract_table(out: Path, ses: str, suffix: str) -> pd.DataFrame:
    return pd.read_csv(_dwi(out, ses, f"space-dwi_model-tensor_{suffix}.tsv"), sep="\t",
                       na_values="n/a", keep_default_na=False, dtype={"subject": str})


@pytest.mark.integration
@pytest.mark.parametrize("ses", [BASE, FOLLOW])
def test_tract_tables_have_every_bundle_with_status_and_reason(dwi_run, ses):
    _, out = dwi_run
    summ = _tract_table(out, ses, "tractstats")
    assert list(summ["bundle"]) == list(BUNDLES) and set(summ["subject"]) == {"01"}
    ok = summ["status"] == "ok"
    assert {"CST_L", "CST_R", "CC"} <= set(summ.loc[ok, "bundle"]), summ[["bundle", "status"]]
    # a missing bundle is an explicit row: NaN values and a reason, never an omission
    assert summ.loc[~ok, "mean_fa"].isna().all() and (summ.loc[~ok, "reason"] != "").all()
    assert summ.loc[ok, "mean_fa"].between(0.3, 0.9).all()
    assert summ.loc[ok, "mean_md"].between(0.5, 1.2).all()  # um^2/ms
    prof = _tract_table(out, ses, "tractprofiles")
    assert len(prof) == len(BUNDLES) * 4 * 100 * 2  # bundles x metrics x nodes x masked flag
    assert set(prof["node"]) == set(range(1, 101))
    for name in summ.loc[ok, "bundle"]:
        ent = name.replace("_", "")
        for space in ("dwi", "MNI152NLin2009aSym"):
            assert _dwi(out, ses, f"space-{space}_bundle-{ent}_desc-density_dwimap.nii.gz").exists()
        assert _dwi(out, ses, f"space-dwi_model-tensor_bundle-{ent}_tractography.trk").exists()
    figs = {p.name for p in (out / f"sub-01/ses-{ses}/figures").glob("*_tract.svg")}
    assert figs == {
        f"sub-01_ses-{ses}_desc-bundles_tract.svg",
        f"sub-01_ses-{ses}_desc-profiles_tract.svg",
    }


def _bundle_dice(root: Path, out: Path, ses: str, ent: str) -> float:
    """Dice of a bundle's density mask (> 0) with the phantom's truth mask (DWI grid)."""
    dens = (
        np.asanyarray(
            nib.load(_dwi(out, ses, f"space-dwi_bundle-{ent}_desc-density_dwimap.nii.gz")).dataobj
        )
        > 0
    )
    truth = _truth(root, ses, f"space-dwi_bundle-{ent}_mask") > 0
    return float(2 * (dens & truth).sum() / (dens.sum() + truth.sum()))


@pytest.mark.integration
def test_cst_density_overlaps_the_truth_bundle(dwi_run):
    """Dice of the CST density mask (> 0) with the phantom's truth CST mask (DWI grid)."""
    root, out = dwi_run
    for name in ("CST_L", "CST_R"):
        ent = name.replace("_", "")
        dice = _bundle_dice(root, out, BASE, ent)
        print(f"{name} Dice {dice:.2f}")
        assert dice >= 0.5, (name, dice)


@pytest.mark.integration
def test_profile_node_one_is_the_same_anatomical_end_in_every_session(dwi_run):
    """Node 1 of each bundle maps to the same MNI end (the start ROI) in both sessions."""
    from dipy.io.stateful_tractogram import Space
    from dipy.io.streamline import load_tractogram

    from pipeline.registration import Transform
    from pipeline.tract.bundles import load_bundle_definitions

    _, out = dwi_run
    defs = load_bundle_definitions()
    ends = {}
    for ses in (BASE, FOLLOW):
        ok = _tract_table(out, ses, "tractstats").query("status == 'ok'")["bundle"]
        xfm = Transform.load(_dwi(out, ses, "from-dwi_to-T1w_mode-image_xfm.json")).compose(
            Transform.load(
                out
                / f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.json"
            )
        )
        ref = str(_dwi(out, ses, "space-dwi_model-tensor_param-fa_dwimap.nii.gz"))
        for name in ok:
            trk = _dwi(
                out, ses, f"space-dwi_model-tensor_bundle-{name.replace('_', '')}_tractography.trk"
            )
            sl = load_tractogram(
                str(trk), ref, to_space=Space.RASMM, bbox_valid_check=False
            ).streamlines
            first = xfm.source_to_target(np.array([s[0] for s in sl])).mean(axis=0)
            last = xfm.source_to_target(np.array([s[-1] for s in sl])).mean(axis=0)
            start = defs[name].start_point
            assert np.linalg.norm(first - start) < np.linalg.norm(last - start), (ses, name)
            ends[ses, name] = first
    common = {n for s, n in ends if s == BASE} & {n for s, n in ends if s == FOLLOW}
    assert {"CST_L", "CST_R", "CC"} <= common
    for name in common:
        gap = np.linalg.norm(ends[BASE, name] - ends[FOLLOW, name])
        print(f"{name}: node-1 end moves {gap:.1f} mm (MNI) between sessions")
        assert gap < 15.0, (name, gap)


@pytest.mark.integration
def test_tract_stage_without_dwi_outputs_names_the_missing_file(dwi_run, tmp_path, capsys):
    from workflows.cli import main

    root, _ = dwi_run
    rc = main([str(root / "bids"), str(tmp_path / "out"), "participant", "--participant-label", "01",
               "--session-label", BASE, "--stages", "tract", "--work-dir", str(tmp_path / "w")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "param-fa_dwimap.nii.gz" in err and "run the anat and dwi stages" in err, err
    assert not list((tmp_path / "out").glob("sub-01/ses-*/dwi/*tract*"))


def _tract_on_a_copy(dwi_run, tmp_path: Path, tract_yaml: str, *, remove: str) -> tuple[Path, int]:
    """Run the tract stage of the baseline session on a copy of the fixture outputs.

    ``tract_yaml`` goes under ``tract:`` in a ``--config`` file; files of the copy
    matching ``remove`` are deleted first. Returns the copy and the exit code.
    """
    from workflows.cli import main

    root, out = dwi_run
    work_out = tmp_path / "out"
    shutil.copytree(out, work_out)
    for old in work_out.glob(f"sub-01/ses-*/dwi/{remove}"):
        old.unlink()
    cfg = tmp_path / "tract.yaml"
    cfg.write_text(f"tract:\n  {tract_yaml}\n")
    rc = main([str(root / "bids"), str(work_out), "participant", "--participant-label", "01",
               "--session-label", BASE, "--stages", "tract", "--config", str(cfg),
               "--work-dir", str(tmp_path / "w")])
    return work_out, rc


@pytest.mark.integration
def test_tract_stage_with_csd_orientations_writes_trx_bundles(dwi_run, tmp_path):
    """``tract.model: csd`` + ``tractogram_format: trx`` through the CLI on copied outputs."""
    from dipy.io.streamline import load_tractogram

    root, _ = dwi_run
    work_out, rc = _tract_on_a_copy(dwi_run, tmp_path, "model: csd\n  tractogram_format: trx",
                                    remove="*tract*")
    assert rc == 0
    summ = _tract_table(work_out, BASE, "tractstats")
    assert list(summ["bundle"]) == list(BUNDLES)
    meta = json.loads(_dwi(work_out, BASE, "space-dwi_model-tensor_tractstats.json").read_text())
    odf = meta["Parameters"]["tracking"]["orientation_model"]
    assert odf["model"] == "csd" and odf["response_voxels"] > 0, odf
    ad, rd = odf["response_eigenvalues_mm2_s"][:2]
    assert 1.2e-3 < ad < 2.2e-3 and rd < 0.6e-3, odf  # phantom WM: AD 1.65e-3, RD 0.38e-3
    ref = str(_dwi(work_out, BASE, "space-dwi_model-tensor_param-fa_dwimap.nii.gz"))
    for name in ("CST_L", "CST_R"):
        ent = name.replace("_", "")
        trx = _dwi(work_out, BASE, f"space-dwi_model-csd_bundle-{ent}_tractography.trx")
        assert len(load_tractogram(str(trx), ref, bbox_valid_check=False).streamlines) >= 10
        dice = _bundle_dice(root, work_out, BASE, ent)
        print(f"CSD {name} Dice {dice:.2f}")
        assert dice >= 0.5, (name, dice)
    assert not list(work_out.glob("sub-01/ses-*/dwi/*model-tensor_bundle-*_tractography.*"))


@pytest.mark.integration
def test_csd_without_the_preprocessed_series_names_the_file_and_the_fix(dwi_run, tmp_path, capsys):
    _, rc = _tract_on_a_copy(dwi_run, tmp_path, "model: csd", remove="*desc-preproc_dwi.nii.gz")
    assert rc == 1
    err = capsys.readouterr().err
    assert "desc-preproc_dwi.nii.gz" in err and "dwi.save_preproc" in err, err


# --- HTML reports
@pytest.mark.integration
def test_report_stage_writes_session_reports_that_load_in_chromium(dwi_run, tmp_path):
    """The participant report stage on the complete tiny run: every figure loads in Chromium."""
    import time
    from importlib import metadata

    from tests.test_report import assert_report_is_complete
    from workflows.cli import main
    from workflows.report import session_report, session_report_path

    root, out = dwi_run
    t0 = time.perf_counter()
    assert main([str(root / "bids"), str(out), "participant", "--participant-label", "01",
                 "--stages", "report", "--config", str(root / "tiny.yaml")]) == 0
    seconds = time.perf_counter() - t0
    shots = Path(os.environ.get("MSMRI_SCREENSHOT_DIR", tmp_path / "screenshots"))
    for ses in (BASE, FOLLOW):
        page = session_report_path(out, "01", ses)
        assert page == out / f"sub-01_ses-{ses}.html" and page.exists()
        status = {s.id: s.status for s in session_report(out, "01", ses).sections}
        assert status["anat"] == status["dwi"] == "ok", status
        assert status["tract"] in ("ok", "partial") and status["func"] in ("ok", "excluded"), status
        text = page.read_text()
        assert "figure not available" not in text.split('id="func"', 1)[0]  # anat, dwi, tract
        figures = sorted((out / f"sub-01/ses-{ses}/figures").glob("*.svg"))
        images = assert_report_is_complete(page, shots / f"sub-01_ses-{ses}.png",
                                           min_images=len(figures))
        shown = {Path(i["src"]).name for i in images}
        assert {f.name for f in figures} <= shown, {f.name for f in figures} - shown
        methods = text.split('<section id="methods">', 1)[1]
        assert f"dipy {metadata.version('dipy')}" in methods and "Power JD" in methods
        print(f"report sub-01 ses-{ses}: {page.stat().st_size / 1024:.0f} kB, {len(images)} "
              f"figures; both pages built in {seconds:.1f} s")


# --- notebook and results API
def _read(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=["n/a"],
                       dtype={"subject": str, "session": str}, **kw)


@pytest.mark.integration
def test_results_api_matches_an_independent_read_of_the_files(dwi_run):
    """workflows.results on the complete tiny run equals nibabel / pandas reads of the files."""
    from workflows.results import DerivativesResults, MissingOutputError

    _, out = dwi_run
    res = DerivativesResults(out)
    assert res.subjects == ["01"] and res.sessions("01") == [BASE, FOLLOW]
    for ses in (BASE, FOLLOW):
        s = res.session("01", ses)
        assert s.stages == dict.fromkeys(("inventory", "anat", "dwi", "tract", "func"), True)
        for metric in ("fa", "md", "rd"):
            img = s.map(metric)
            ref = nib.load(_dwi(out, ses, f"space-dwi_model-tensor_param-{metric}_dwimap.nii.gz"))
            np.testing.assert_array_equal(np.asanyarray(img.dataobj), np.asanyarray(ref.dataobj))
            np.testing.assert_array_equal(img.affine, ref.affine)
        pd.testing.assert_frame_equal(
            s.roi_table(), _read(_dwi(out, ses, "space-dwi_model-tensor_roistats.tsv"))
        )
        for suffix, table in (
            ("tractstats", s.tract_table()),
            ("tractprofiles", s.tract_profiles()),
        ):
            pd.testing.assert_frame_equal(
                table, _read(_dwi(out, ses, f"space-dwi_model-tensor_{suffix}.tsv"))
            )
        anat = out / f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}"
        pd.testing.assert_frame_equal(s.volumes(), _read(Path(f"{anat}_volumes.tsv")))
        func = out / f"sub-01/ses-{ses}/func/sub-01_ses-{ses}_task-rest"
        summary = _read(Path(f"{func}_desc-summary_bold.tsv"))
        pd.testing.assert_frame_equal(s.func_summary(), summary)
        if int(summary["excluded"].iloc[0]):
            with pytest.raises(MissingOutputError, match="excluded"):
                s.connectome()
        else:
            conn = s.connectome()
            assert conn.atlas == "dosenbach" and conn.measure == "pearsoncorrelation"
            labels = _read(Path(f"{func}_seg-dosenbach_dseg.tsv"))
            matrix = _read(
                Path(f"{func}_seg-dosenbach_stat-pearsoncorrelation_relmat.tsv"), index_col=0
            )
            pd.testing.assert_frame_equal(conn.labels, labels)
            assert (
                conn.regions
                == list(labels["name"])
                == list(conn.matrix.columns)
                == list(conn.matrix.index)
            )
            np.testing.assert_array_equal(conn.to_numpy(), matrix.to_numpy(dtype=float))
        figures = sorted((out / f"sub-01/ses-{ses}/figures").glob("*.svg"))
        assert sorted(s.figures().values()) == figures
        prov = s.provenance(_dwi(out, ses, "space-dwi_model-tensor_param-fa_dwimap.nii.gz"))
        assert prov == json.loads(
            _dwi(out, ses, "space-dwi_model-tensor_param-fa_dwimap.json").read_text()
        )
    rd = res.longitudinal("01", "roi_table", rois=["NAWM_L"], metrics=["rd"])
    assert rd["session"].tolist() == [BASE, FOLLOW]
    assert rd["mean"].tolist() == [_table(out, ses).query("roi == 'NAWM_L' and metric == 'rd'")["mean"].item()
                                   for ses in (BASE, FOLLOW)]


@pytest.mark.integration
def test_inspect_subject_notebook_executes_on_the_complete_run(dwi_run, tmp_path):
    """notebooks/inspect_subject.ipynb top to bottom (nbclient) on the tiny run's outputs."""
    import re

    from tests.test_results import execute_notebook
    from workflows.results import DerivativesResults

    _, out = dwi_run
    nb, text, seconds = execute_notebook(
        tmp_path, {"MSMRI_OUTPUT_DIR": str(out), "MSMRI_SUBJECT": "01", "MSMRI_SESSION": BASE},
        timeout=600,
    )
    print(f"notebook executed in {seconds:.1f} s")
    assert f"sub-01: sessions {BASE}, {FOLLOW}; showing ses-{BASE}" in text
    assert f"NAWM tensor metrics, sub-01 ses-{BASE} (mean):" in text
    assert "stage not run" not in text, text
    res = DerivativesResults(out)
    # the printed NAWM RD table: one line per session, values as in the ROI tables
    block = text.split("NAWM RD (um^2/ms), sub-01:", 1)[1]
    for ses in (BASE, FOLLOW):
        line = re.search(rf"^{ses}\s+(.*)$", block, re.M).group(1).split()
        rd = res.session("01", ses).roi_table(rois=["NAWM_L", "NAWM_R"], metrics="rd")["mean"]
        np.testing.assert_allclose([float(v) for v in line[1:3]], rd, atol=1e-4)
    excluded = bool(res.session("01", BASE).func_summary()["excluded"].iloc[0])
    images = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert images >= (3 if excluded else 4), images  # FA, tract profiles, [connectome], NAWM RD

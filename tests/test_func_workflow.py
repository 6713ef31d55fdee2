"""Resting-state fMRI stage end to end on the tiny phantom (Nipype workflow via the CLI).

One subject, both sessions: inventory and structural stage, then the fMRI stage
with the shipped defaults except three keys (``OVERRIDE``): the phantom's atlas
(Dosenbach), a minimum duration that its 200 s runs can meet, and no low-pass
filter (too few samples for a band-pass).  With the default 0.01-0.08 Hz band the
matrices still correlate with the planted population matrix (r = 0.35 / 0.28),
but the planted-edge change cannot be told apart from a global shift (about 4
residual degrees of freedom).  Checks compare
with the phantom's truth (``truth/sub-01/ses-*/``): the motion trace, the
population correlation matrix and the planted edges.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputError
from pipeline.phantom.trial import PRESETS
from tests.conftest import TINY_FUNC_CONFIG as OVERRIDE
from workflows.nodeio import SERIES_EXT

SPEC = PRESETS["tiny"]
BASE, FOLLOW = SPEC.sessions
TASK = "rest"
FIGURES = {"carpetraw", "carpetdenoised", "fd", "connectome", "boldtoT1w"}


def _cli(*args: str) -> int:
    from workflows.cli import main

    return main([str(a) for a in args])


def _per_session(root: Path, out: Path, *args) -> float:
    """Run the CLI for every session at once (one process and one core each, like Snakemake jobs).

    Returns the wall time (s).
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    t0 = time.perf_counter()
    procs = []
    for ses in SPEC.sessions:
        log = (root / f"{ses}_{args[1]}.log").open("w")
        cmd = [sys.executable, "-m", "workflows.cli", root / "bids", out, "participant",
               "--participant-label", "01", "--session-label", ses, "--nprocs", "1", *args]
        procs.append((subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                       env=env), log))
    for proc, log in procs:
        proc.wait()
        log.close()
        assert proc.returncode == 0, Path(log.name).read_text()[-4000:]
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def func_run(tmp_path_factory):
    from workflows.synth import write_trial

    root = tmp_path_factory.mktemp("func")
    write_trial(root, SPEC, subjects=[0])
    cfg = root / "tiny.yaml"
    cfg.write_text(OVERRIDE)
    out = root / "derivatives"
    common = ["--config", cfg, "--work-dir", root / "work"]
    _per_session(root, out, "--stages", "inventory", "anat", *common)
    seconds = _per_session(root, out, "--stages", "func", *common)
    print(f"func stage: {seconds:.0f} s wall for both sessions at once (one core each)")
    return root, out


def _func(out: Path, ses: str, name: str) -> Path:
    return out / f"sub-01/ses-{ses}/func/sub-01_ses-{ses}_task-{TASK}_{name}"


def _truth(root: Path, ses: str) -> dict:
    return json.loads((root / f"truth/sub-01/ses-{ses}/sub-01_ses-{ses}_truth.json").read_text())


def _matrix(out: Path, ses: str, stat: str = "pearsoncorrelation") -> pd.DataFrame:
    path = _func(out, ses, f"seg-dosenbach_stat-{stat}_relmat.tsv")
    return pd.read_csv(path, sep="\t", index_col=0, na_values="n/a")


def _regions(out: Path, ses: str) -> pd.DataFrame:
    return pd.read_csv(_func(out, ses, "seg-dosenbach_dseg.tsv"), sep="\t", na_values="n/a")


def _summary(out: Path, ses: str) -> pd.Series:
    return pd.read_csv(_func(out, ses, "desc-summary_bold.tsv"), sep="\t", na_values="n/a").iloc[0]


@pytest.mark.integration
def test_outputs_exist_with_provenance(func_run):
    _, out = func_run
    for ses in SPEC.sessions:
        for name in ("space-bold_boldref.nii.gz", "space-bold_desc-brain_mask.nii.gz",
                     "space-bold_label-WM_mask.nii.gz", "space-bold_label-CSF_mask.nii.gz",
                     "space-MNI152NLin2009aSym_desc-brain_mask.nii.gz",
                     "from-bold_to-T1w_mode-image_xfm.json", "desc-confounds_timeseries.tsv",
                     "seg-dosenbach_dseg.tsv", "seg-dosenbach_desc-raw_timeseries.tsv",
                     "seg-dosenbach_desc-denoised_timeseries.tsv",
                     "seg-dosenbach_stat-pearsoncorrelation_relmat.tsv",
                     "seg-dosenbach_stat-fisherz_relmat.tsv", "desc-summary_bold.tsv"):
            assert _func(out, ses, name).exists(), (ses, name)
        assert not _func(out, ses, "space-MNI152NLin2009aSym_desc-preproc_bold.nii.gz").exists()
        meta = json.loads(
            _func(out, ses, "seg-dosenbach_stat-pearsoncorrelation_relmat.json").read_text()
        )
        assert (
            meta["Sources"]
            and meta["RandomSeed"] == 20251125
            and "nilearn" in meta["SoftwareVersions"]
        )
        assert meta["Parameters"]["func"]["strategy"] == "acompcor"
        assert meta["NodeFile"] == f"sub-01_ses-{ses}_task-rest_seg-dosenbach_dseg.tsv"
        assert meta["Strategy"] == "acompcor+scrubbing"
        side = json.loads(_func(out, ses, "desc-confounds_timeseries.json").read_text())
        assert side["framewise_displacement"]["Units"] == "mm" and side["RepetitionTime"] == 2.0
        figures = {p.name.split("_desc-")[1].split("_")[0]
                   for p in (out / f"sub-01/ses-{ses}/figures").glob("*_task-rest_*_bold.svg")}
        assert figures == FIGURES, figures
        conf = pd.read_csv(
            _func(out, ses, "desc-confounds_timeseries.tsv"), sep="\t", na_values="n/a"
        )
        assert len(conf) == SPEC.bold_volumes and conf.notna().all().all()
        assert {"trans_x", "rot_z", "white_matter", "csf", "global_signal", "w_comp_cor_04",
                "c_comp_cor_00", "framewise_displacement", "std_dvars", "censored"} <= set(conf)
        row = _summary(out, ses)
        print(f"ses-{ses}: mean FD {row.mean_fd_mm:.3f} mm, {row.censored_pct:.1f} % censored, "
              f"{row.minutes_kept:.2f} min kept, dof {row.dof:.1f}, "
              f"{row.n_regions_valid}/{row.n_regions} regions")
        assert row.excluded == 0 and pd.isna(row.exclusion_reason)
        assert (
            row.n_kept == SPEC.bold_volumes - row.n_censored == int((conf["censored"] == 0).sum())
        )
        assert row.minutes_kept == pytest.approx(row.n_kept * SPEC.bold_tr / 60)
        den = pd.read_csv(_func(out, ses, "seg-dosenbach_desc-denoised_timeseries.tsv"), sep="\t",
                          na_values="n/a")
        assert den.shape == (row.n_kept, row.n_regions)


@pytest.mark.integration
@pytest.mark.parametrize("ses", [BASE, FOLLOW])
def test_matrix_is_a_labelled_correlation_matrix(func_run, ses):
    _, out = func_run
    regions = _regions(out, ses)
    m = _matrix(out, ses)
    assert m.shape == (len(regions), len(regions)) == (160, 160)
    assert list(m.index) == list(m.columns) == regions["name"].tolist()
    a = m.to_numpy()
    assert np.allclose(a, a.T, equal_nan=True)
    valid = regions["valid"].to_numpy(bool)
    assert valid.sum() >= 150, regions.loc[~valid, ["name", "coverage"]]
    # invalid regions: whole NaN rows and columns, flagged; valid ones: finite, unit diagonal
    assert np.isnan(a[~valid]).all() and np.isnan(a[:, ~valid]).all()
    assert np.isfinite(a[np.ix_(valid, valid)]).all()
    np.testing.assert_allclose(np.diag(a)[valid], 1.0, atol=1e-6)
    assert (regions.loc[~valid, "coverage"] < 0.5).all() and (
        regions.loc[valid, "coverage"] >= 0.5
    ).all()
    z = _matrix(out, ses, "fisherz").to_numpy()
    np.testing.assert_allclose(np.diag(z)[valid], 0.0)
    off = ~np.eye(len(a), dtype=bool) & np.outer(valid, valid)
    np.testing.assert_allclose(z[off], np.arctanh(np.clip(a[off], -1 + 1e-7, 1 - 1e-7)), atol=1e-5)


@pytest.mark.integration
def test_regions_outside_the_field_of_view_are_nan_not_dropped(func_run, tmp_path):
    """A BOLD slab ending at MNI z = 30 mm: regions above are NaN rows, the matrix keeps its size."""
    from pipeline.config import load_config
    from workflows.func import Connectomes, DenoiseRegions, RegionSignals, _node_params

    root, out = func_run
    node = root / f"work/sub-01_ses-{BASE}/func_wf/to_mni"  # the MNI-space run of the fixture
    mask = nib.load(node / "mask_mni.nii.gz")
    data = np.asanyarray(mask.dataobj).copy()
    z_mm = nib.affines.apply_affine(mask.affine, np.indices(data.shape).reshape(3, -1).T)[:, 2]
    data[z_mm.reshape(data.shape) > 30] = 0
    cut = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(data, mask.affine), cut)
    params = _node_params(load_config([root / "tiny.yaml"]).to_dict())
    reg = RegionSignals(bold=str(node / f"bold_mni{SERIES_EXT}"), mask=str(cut),
                        params=params["regions"]).run(cwd=str(tmp_path)).outputs
    regions = pd.read_csv(reg.regions, sep="\t")
    invalid = (regions["valid"] == 0).to_numpy()
    print(f"{int(invalid.sum())} of {len(regions)} regions without coverage; highest valid z "
          f"{regions.loc[~invalid, 'z'].max():.0f} mm")
    assert 10 < invalid.sum() < len(regions) - 10 and (regions.loc[invalid, "z"] > 25).all()
    den = DenoiseRegions(timeseries=reg.timeseries, regions=reg.regions, tr=SPEC.bold_tr,
                         confounds=str(_func(out, BASE, "desc-confounds_timeseries.tsv")),
                         params=params["denoise"]).run(cwd=str(tmp_path)).outputs
    assert not den.summary["excluded"] and den.summary["n_regions_valid"] == int((~invalid).sum())
    mats = Connectomes(denoised=den.denoised, regions=reg.regions,
                       measures=["correlation", "partial_correlation"]).run(cwd=str(tmp_path))
    for path in mats.outputs.matrices.values():
        m = pd.read_csv(path, sep="\t", index_col=0, na_values="n/a")
        a = m.to_numpy()
        assert m.shape == (160, 160) and list(m.index) == regions["label"].tolist()
        assert np.isnan(a[invalid]).all() and np.isnan(a[:, invalid]).all()
        assert np.isfinite(a[np.ix_(~invalid, ~invalid)]).all()
        np.testing.assert_allclose(np.diag(a)[~invalid], 1.0, atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("ses", [BASE, FOLLOW])
def test_realignment_recovers_the_motion_trace(func_run, ses):
    root, out = func_run
    truth = _truth(root, ses)["bold"]
    true = np.array(truth["motion_params"])
    conf = pd.read_csv(_func(out, ses, "desc-confounds_timeseries.tsv"), sep="\t", na_values="n/a")
    est = conf[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
    mm = true.copy()
    mm[:, 3:] *= 50.0  # rotations as arc length at 50 mm
    moving = mm.std(axis=0) > 0.03  # parameters with non-trivial motion (mm-equivalent SD)
    r = np.array([np.corrcoef(true[:, k], est[:, k])[0, 1] for k in range(6)])
    r_fd = np.corrcoef(truth["framewise_displacement"], conf["framewise_displacement"])[0, 1]
    print(f"ses-{ses} motion r (tx ty tz rx ry rz): {np.round(r, 3)}, moving {moving.tolist()}, "
          f"FD r {r_fd:.3f}")
    assert moving.sum() >= 3
    assert np.all(r[moving] >= 0.9), r
    assert r_fd > 0.8


@pytest.mark.integration
def test_matrix_recovers_the_population_correlation(func_run):
    root, out = func_run
    rs = {}
    for ses in SPEC.sessions:
        pop = pd.read_csv(root / f"truth/sub-01/ses-{ses}/func/sub-01_ses-{ses}_task-rest_"
                          "stat-populationcorrelation_relmat.tsv", sep="\t", index_col=0)
        m = _matrix(out, ses)
        assert list(pop.index) == list(m.index)
        iu = np.triu_indices(len(m), 1)
        a, b = m.to_numpy()[iu], pop.to_numpy()[iu]
        ok = np.isfinite(a)
        rs[ses] = np.corrcoef(a[ok], b[ok])[0, 1]
    print("r(recovered, population):", {k: round(v, 3) for k, v in rs.items()})
    assert min(rs.values()) >= 0.45, rs  # measured 0.55 / 0.56


@pytest.mark.integration
def test_planted_edges_rise_at_follow_up(func_run):
    """Planted edges: mean Fisher z rises, also relative to all edges and in rank."""
    from scipy.stats import rankdata

    root, out = func_run
    z, pct = {}, {}
    for ses in SPEC.sessions:
        i, j = np.sort(np.array(_truth(root, ses)["bold"]["planted_edges"]), axis=1).T
        m = _matrix(out, ses, "fisherz").to_numpy()
        iu = np.triu_indices(len(m), 1)
        rank = np.full(m.shape, np.nan)
        rank[iu] = rankdata(m[iu]) / len(iu[0])
        z[ses] = (np.nanmean(m[i, j]), np.nanmean(m[iu]))
        pct[ses] = float(np.mean(rank[i, j]))
    rise = _truth(root, FOLLOW)["bold"]["planted_correlation_rise"]
    change = z[FOLLOW][0] - z[BASE][0]
    relative = (z[FOLLOW][0] - z[FOLLOW][1]) - (z[BASE][0] - z[BASE][1])
    print(f"planted-edge mean z {z[BASE][0]:.3f} -> {z[FOLLOW][0]:.3f} (change {change:+.3f}, "
          f"relative to all edges {relative:+.3f}); mean percentile among all edges "
          f"{pct[BASE]:.2f} -> {pct[FOLLOW]:.2f}; planted correlation rise {rise:.3f}")
    # measured +0.076, +0.069 and 0.49 -> 0.63: one subject, 200 s runs, a weak but real rise
    assert change > 0.05 and relative > 0.04 and pct[FOLLOW] - pct[BASE] > 0.08


@pytest.mark.integration
def test_too_little_data_excludes_the_run_and_succeeds(func_run, tmp_path, capsys):
    """min_duration_s above the run length: summary with the reason, no matrices, exit 0."""
    root, out = func_run
    out2 = tmp_path / "derivatives"
    anat = out2 / f"sub-01/ses-{BASE}/anat"
    anat.parent.mkdir(parents=True)
    anat.symlink_to(out / f"sub-01/ses-{BASE}/anat", target_is_directory=True)
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(OVERRIDE.replace("min_duration_s: 120", "min_duration_s: 600"))
    # the same work folder: realignment and registrations come from Nipype's cache
    code = _cli(root / "bids", out2, "participant", "--participant-label", "01", "--session-label",
                BASE, "--stages", "func", "--config", cfg, "--work-dir", root / "work")
    assert code == 0
    row = _summary(out2, BASE)
    assert row.excluded == 1 and "at least 600 s required" in row.exclusion_reason
    side = json.loads(_func(out2, BASE, "desc-summary_bold.json").read_text())
    assert side["Excluded"] is True and side["ExclusionReason"] == row.exclusion_reason
    assert not list(_func(out2, BASE, "x").parent.glob("*_relmat.tsv"))
    assert not _func(out2, BASE, "seg-dosenbach_desc-denoised_timeseries.tsv").exists()
    assert _func(out2, BASE, "seg-dosenbach_desc-raw_timeseries.tsv").exists()
    figs = {p.name for p in (out2 / f"sub-01/ses-{BASE}/figures").glob("*_bold.svg")}
    assert any("desc-fd_" in f for f in figs) and not any("connectome" in f for f in figs)


def _bids_copy(root: Path, dest: Path) -> Path:
    """The raw dataset of the fixture with only the baseline session (fast to index)."""
    bids = dest / "bids"
    shutil.copytree(root / "bids", bids, ignore=shutil.ignore_patterns(f"ses-{FOLLOW}"))
    return bids


@pytest.mark.integration
def test_bold_without_repetition_time_names_the_file(func_run, tmp_path, capsys):
    root, _ = func_run
    bids = _bids_copy(root, tmp_path)
    for side in [bids / "task-rest_bold.json", *bids.glob("sub-01/ses-*/func/*_bold.json")]:
        meta = json.loads(side.read_text())
        meta.pop("RepetitionTime")
        side.write_text(json.dumps(meta))
    code = _cli(bids, tmp_path / "out", "participant", "--stages", "func")
    err = capsys.readouterr().err
    assert code == 1
    assert f"sub-01_ses-{BASE}_task-rest_bold.nii.gz" in err and "RepetitionTime is missing" in err


@pytest.mark.integration
def test_3d_bold_names_the_file(func_run, tmp_path, capsys):
    root, _ = func_run
    bids = _bids_copy(root, tmp_path)
    path = bids / f"sub-01/ses-{BASE}/func/sub-01_ses-{BASE}_task-rest_bold.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), path)
    code = _cli(bids, tmp_path / "out", "participant", "--stages", "func")
    err = capsys.readouterr().err
    assert code == 1 and path.name in err and "4-D" in err, err


@pytest.mark.integration
def test_slice_timing_mismatch_names_the_sidecar(func_run, tmp_path):
    from workflows.func import LoadBold

    root, _ = func_run
    bold = root / f"bids/sub-01/ses-{BASE}/func/sub-01_ses-{BASE}_task-rest_bold.nii.gz"
    side = tmp_path / "sub-01_ses-baseline_task-rest_bold.json"
    n_slices = nib.load(bold).shape[2]
    side.write_text(json.dumps({"RepetitionTime": 2.0, "SliceTiming": [0.1] * (n_slices - 1)}))
    node = LoadBold(
        bold=str(bold), bold_json=str(side), params={"min_volumes": 50, "slice_timing": True}
    )
    with pytest.raises(InputError, match=rf"{side.name}.*SliceTiming has {n_slices - 1} entries"):
        node.run(cwd=str(tmp_path))
    side.write_text(json.dumps({"RepetitionTime": 2.0, "SliceTiming": [0.1] * n_slices,
                                "SliceEncodingDirection": "k-"}))
    res = node.run(cwd=str(tmp_path))
    assert res.outputs.slice_axis == 2 and len(res.outputs.slice_timing) == n_slices


def test_workflow_builds_for_the_main_options(tmp_path):
    """Workflow-build test (no data): default and non-default options give a connected graph."""
    from pipeline.config import load_config
    from workflows.func import init_func_wf

    anat = {k: tmp_path / f"{k}.nii.gz" for k in ("t1w", "mask", "wm", "csf")}
    anat["mni_xfm"] = tmp_path / "xfm.json"
    for path in (*anat.values(), tmp_path / "bold.nii.gz"):
        path.touch()  # interfaces check that their input files exist; nothing is read
    anat = {k: str(v) for k, v in anat.items()}
    for overrides in ({}, {"func": {"strategy": "36P", "scrubbing": False,
                                    "measures": ["correlation", "partial_correlation"]}}):
        cfg = load_config(overrides=overrides).to_dict()
        wf = init_func_wf(config=cfg, bold=str(tmp_path / "bold.nii.gz"), bold_json=None, anat=anat,
                          subject="01", session="baseline", output_dir=str(tmp_path / "out"))
        names = {n.name for n in wf._get_all_nodes()}
        assert names == {"load", "preprocess", "bold_to_t1w", "masks", "confounds", "to_mni",
                         "regions", "denoise", "connectomes", "qc", "derivatives"}
    with pytest.raises(ValueError, match="structural inputs"):
        init_func_wf(config=cfg, bold="b", bold_json=None, anat={}, subject="01", session="b",
                     output_dir="o")


@pytest.mark.integration
def test_label_image_atlas(func_run, tmp_path):
    """A user label image (MNI) with its table: regions named by the table, seg- from its name."""
    from workflows.func import RegionSignals, seg_name

    root, _ = func_run
    node = root / f"work/sub-01_ses-{BASE}/func_wf/to_mni"
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = -90
    lab = np.zeros((91, 109, 91), np.int16)
    lab[20:30, 50:60, 40:50] = 1  # left hemisphere (x about -50 .. -32 mm)
    lab[60:70, 50:60, 40:50] = 2  # right hemisphere
    lab[40:50, 0:3, 0:3] = 7  # outside the brain: no coverage
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "atlas.nii.gz")
    tsv = tmp_path / "my-atlas.tsv"
    pd.DataFrame({"index": [1, 2, 7], "name": ["L", "R", "out"]}).to_csv(tsv, sep="\t", index=False)
    params = {"atlas": str(tmp_path / "atlas.nii.gz"), "atlas_labels": str(tsv),
              "sphere_radius_mm": 5.0, "min_coverage": 0.5}
    res = RegionSignals(bold=str(node / f"bold_mni{SERIES_EXT}"), mask=str(node / "mask_mni.nii.gz"),
                        params=params).run(cwd=str(tmp_path)).outputs
    regions = pd.read_csv(res.regions, sep="\t")
    assert regions["label"].tolist() == ["L", "R", "out"] and regions["valid"].tolist() == [1, 1, 0]
    ts = pd.read_csv(res.timeseries, sep="\t", na_values="n/a")
    assert (
        ts.shape == (SPEC.bold_volumes, 3)
        and ts["out"].isna().all()
        and ts[["L", "R"]].notna().all().all()
    )
    assert seg_name(params["atlas"], params["atlas_labels"]) == "myatlas"


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"high_pass": 0.1, "low_pass": 0.08}, "func.high_pass", "must be below"),
        ({"atlas": "my_atlas.nii.gz"}, "func.atlas", "atlas_labels"),
        ({"atlas_labels": "labels.tsv"}, "func.atlas_labels", "only used with a label image"),
        ({"measures": ["correlation", "correlation"]}, "func.measures", "more than once"),
        ({"measures": ["pearson"]}, "func.measures", "correlation"),
        ({"strategy": "48P"}, "func.strategy", "24P"),
    ],
)
def test_func_configuration_errors_name_the_key(overrides, key, message):
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"'{key}.*{message}"):
        load_config(overrides={"func": overrides})


def test_nuisance_masks_erode_white_matter_and_relax_when_too_small():
    from pipeline.func.confounds import nuisance_masks

    brain = np.ones((12, 12, 12), bool)
    wm = np.zeros(brain.shape)
    wm[2:9, 2:9, 2:9] = 0.95  # a 7-voxel cube: eroded once -> 5-voxel cube
    csf = np.zeros(brain.shape)
    csf[10, 10, :] = 0.92
    w, c, notes = nuisance_masks(wm, csf, brain)
    assert w.sum() == 5**3 and c.sum() == 12 and notes == []
    thin = np.zeros(brain.shape)
    thin[4, 4, :] = 0.7  # a line: empty after erosion, below 0.9
    w, _, notes = nuisance_masks(thin, csf, brain)
    assert w.sum() == 12 and "relaxed to probability >= 0.7 without erosion" in notes[0]
    with pytest.raises(ValueError, match="CSF mask has 0 voxels"):
        nuisance_masks(wm, np.zeros(brain.shape), brain)

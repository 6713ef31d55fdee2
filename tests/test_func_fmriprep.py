"""Resting-state fMRI stage from fMRIPrep derivatives (``func.input: fmriprep``) via the CLI.

A small fMRIPrep-style folder is written next to a tiny raw BIDS dataset
(:func:`tests.conftest.build_bids`): per session a 4-D ``desc-preproc_bold`` on a
4 mm MNI152NLin2009cAsym grid and a ``desc-confounds_timeseries.tsv`` + ``.json``
with fMRIPrep's column names (motion and expansions, tissue signals, DVARS, FD,
RMSD, cosines, ``a/c/w/t_comp_cor_XX`` with their JSON masks, non-steady-state
and motion outliers).  The image has known region signals:

- voxel noise, independent everywhere (SD ``NOISE``);
- one signal shared by two Dosenbach spheres (``PAIR``): a planted edge;
- a confound added to every voxel, written to the TSV as ``w_comp_cor_00``
  (a white-matter CompCor component): ``acompcor`` regresses it out, ``24P``
  does not, so unrelated regions correlate only without it.

``baseline`` has fMRIPrep's sidecar and brain mask and three FD spikes;
``m06`` has neither sidecar (TR from the raw sidecar) nor mask (intensity mask)
and moves in most volumes, so it is excluded after scrubbing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.conftest import build_bids

TR = 2.0
N_VOL = 150  # 300 s: above the default min_duration_s of 240 s after 4 censored volumes
SPACE = "MNI152NLin2009cAsym"
SESSIONS = ("baseline", "m06")
NOISE, SHARED, CONFOUND = 10.0, 10.0, 8.0  # voxel SDs of the three signal parts
PAIR = ("post occipital 160", "vmPFC 1")  # Dosenbach regions given the shared signal (far apart)
SPIKES = (40, 80, 120)  # high-FD volumes of the baseline run
CONFIG = """\
func:
  input: fmriprep
  fmriprep_dir: derivatives/fmriprep   # relative to the BIDS dir
  atlas: dosenbach
  low_pass: null    # 150 volumes band-passed to 0.01-0.08 Hz leave ~16 residual dof
"""
SAME_AS_RAW = (
    "desc-confounds_timeseries.tsv", "seg-dosenbach_dseg.tsv",
    "seg-dosenbach_desc-raw_timeseries.tsv", "seg-dosenbach_desc-denoised_timeseries.tsv",
    "seg-dosenbach_stat-pearsoncorrelation_relmat.tsv", "seg-dosenbach_stat-fisherz_relmat.tsv",
    "desc-summary_bold.tsv",
)


def _grid() -> tuple[tuple[int, int, int], np.ndarray]:
    """A 4 mm box in MNI mm covering every Dosenbach sphere (x -72..72, y -104..76, z -48..80)."""
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = (-72.0, -104.0, -48.0)
    return (37, 46, 33), aff


def _expand(x: np.ndarray, name: str) -> dict[str, np.ndarray]:
    """fMRIPrep's expansions; the derivatives are n/a at the first volume."""
    d = np.concatenate([[np.nan], np.diff(x)])
    return {name: x, f"{name}_derivative1": d, f"{name}_power2": x**2,
            f"{name}_derivative1_power2": d**2}


def _confounds(rng, fd: np.ndarray, confound: np.ndarray) -> tuple[pd.DataFrame, dict]:
    """fMRIPrep (23.x) confound table and JSON with ``confound`` as ``w_comp_cor_00``."""
    n = fd.size
    cols: dict[str, np.ndarray] = {}
    for name in ("global_signal", "csf", "white_matter", "csf_wm"):
        cols.update(_expand(1000 + np.cumsum(rng.normal(0, 0.5, n)), name))
    cols["tcompcor"] = 1000 + rng.normal(0, 1, n)
    cols["std_dvars"] = np.concatenate([[np.nan], np.abs(rng.normal(1.0, 0.1, n - 1))])
    cols["dvars"] = 20 * cols["std_dvars"]
    cols["framewise_displacement"] = np.concatenate([[np.nan], fd[1:]])
    cols["rmsd"] = cols["framewise_displacement"] / 2
    meta: dict[str, dict] = {}
    for prefix, mask, k in (("t", None, 3), ("c", "CSF", 5), ("w", "WM", 5), ("a", "combined", 5)):
        u = np.linalg.qr(rng.normal(size=(n, k)))[0]  # orthonormal, like singular vectors
        if prefix == "w":
            u[:, 0] = confound / np.linalg.norm(confound)
        for j in range(k):
            name = f"{prefix}_comp_cor_{j:02d}"
            cols[name] = u[:, j]
            meta[name] = {"Method": "tCompCor" if prefix == "t" else "aCompCor", "Retained": True,
                          "SingularValue": 100.0 - j, "VarianceExplained": 0.1,
                          "CumulativeVarianceExplained": 0.1 * (j + 1),
                          **({"Mask": mask} if mask else {})}
    for j in range(3):  # fMRIPrep's discrete cosine basis (128 s cut-off)
        cols[f"cosine{j:02d}"] = np.sqrt(2 / n) * np.cos(np.pi * (j + 1) * (np.arange(n) + 0.5) / n)
    cols["non_steady_state_outlier00"] = (np.arange(n) == 0).astype(float)
    for j, t in enumerate(np.flatnonzero(fd > 0.5)[:50]):
        cols[f"motion_outlier{j:02d}"] = (np.arange(n) == t).astype(float)
    for k, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
        scale = 0.05 if k < 3 else 0.001
        cols.update(_expand(np.cumsum(rng.normal(0, scale, n)), name))
    return pd.DataFrame(cols), meta


def write_fmriprep(root: Path, bids: Path, session: str, *, seed: int, moving: bool = False,
                   sidecar: bool = True, mask: bool = True) -> dict:
    """One fMRIPrep-style run with known signals (see the module docstring); returns the truth."""
    from pipeline.func.connectome import sphere_parcellation

    rng = np.random.default_rng(seed)
    shape, aff = _grid()
    func = root / f"sub-01/ses-{session}/func"
    func.mkdir(parents=True, exist_ok=True)
    stem = f"sub-01_ses-{session}_task-rest"
    regions = sphere_parcellation("dosenbach", radius_mm=5.0).regions.set_index("label")
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = ijk * 4.0 + aff[:3, 3]
    data = 1000 + NOISE * rng.standard_normal((*shape, N_VOL), dtype=np.float32)
    shared = rng.standard_normal(N_VOL)
    for name in PAIR:
        near = np.linalg.norm(xyz - regions.loc[name, ["x", "y", "z"]].to_numpy(float), axis=1) <= 6
        i, j, k = ijk[near].T
        data[i, j, k, :] += SHARED * shared
    confound = rng.standard_normal(N_VOL)
    confound = (confound - confound.mean()) / confound.std()
    data += CONFOUND * confound.astype(np.float32)
    img = nib.Nifti1Image(np.round(data).astype(np.int16), aff)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((4.0, 4.0, 4.0, TR))
    nib.save(img, func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz")
    if sidecar:
        (func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps(
            {"RepetitionTime": TR, "SkullStripped": False, "TaskName": "rest"}))
    if mask:
        nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), aff),
                 func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz")
    fd = np.abs(rng.normal(0.1, 0.03, N_VOL))
    if moving:
        fd[20:] = 0.8
    else:
        fd[list(SPIKES)] = 1.2
    table, meta = _confounds(rng, fd, confound)
    table.to_csv(
        func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a"
    )
    (func / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    return {"confound": confound, "shared": shared}


def _cli(*args) -> int:
    from workflows.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def fmriprep_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmriprep")
    bids = build_bids(root / "bids", subjects=("01",), sessions=SESSIONS, bold_volumes=N_VOL, tr=TR)
    prep = bids / "derivatives/fmriprep"
    (prep / "dataset_description.json").parent.mkdir(parents=True)
    (prep / "dataset_description.json").write_text(json.dumps(
        {"Name": "fMRIPrep output", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.0"}]}))
    write_fmriprep(prep, bids, "baseline", seed=1)
    write_fmriprep(prep, bids, "m06", seed=2, moving=True, sidecar=False, mask=False)
    cfg = root / "fmriprep.yaml"
    cfg.write_text(CONFIG)
    out = root / "derivatives"
    # func only: no anat stage, no structural outputs
    code = _cli(bids, out, "participant", "--stages", "func", "--config", cfg,
                "--work-dir", root / "work")
    assert code == 0
    return root, bids, out


def _func(out: Path, ses: str, name: str) -> Path:
    return out / f"sub-01/ses-{ses}/func/sub-01_ses-{ses}_task-rest_{name}"


def _matrix(out: Path, ses: str = "baseline") -> pd.DataFrame:
    return pd.read_csv(_func(out, ses, "seg-dosenbach_stat-pearsoncorrelation_relmat.tsv"),
                       sep="\t", index_col=0, na_values="n/a")


def _far_pairs(regions: pd.DataFrame) -> np.ndarray:
    """Upper-triangle pairs of regions > 14 mm from each other and from the planted pair."""
    xyz = regions[["x", "y", "z"]].to_numpy(float)
    pair = regions["name"].isin(PAIR).to_numpy()
    dist = np.linalg.norm(xyz[:, None] - xyz[None], axis=2)
    away = dist[:, pair].min(axis=1) > 14
    ok = np.triu(dist > 14, 1) & np.outer(away, away)
    return ok


@pytest.mark.integration
def test_outputs_have_the_raw_mode_names_and_fmriprep_provenance(fmriprep_run):
    _, bids, out = fmriprep_run
    assert not (out / "sub-01/ses-baseline/anat").exists()
    for ses in SESSIONS:
        assert _func(out, ses, f"space-{SPACE}_desc-brain_mask.nii.gz").exists()
        assert not list(_func(out, ses, "x").parent.glob("*space-bold*"))  # fMRIPrep did these
    for name in SAME_AS_RAW:
        assert _func(out, "baseline", name).exists(), name
    figures = {p.name.split("_desc-")[1].split("_")[0]
               for p in (out / "sub-01/ses-baseline/figures").glob("*_task-rest_*_bold.svg")}
    assert figures == {"carpetraw", "carpetdenoised", "fd", "connectome", "boldtoMNI"}, figures
    meta = json.loads(_func(out, "baseline", "seg-dosenbach_stat-pearsoncorrelation_relmat.json")
                      .read_text())
    prep = "derivatives/fmriprep/sub-01/ses-baseline/func/sub-01_ses-baseline_task-rest_"
    sources = {Path(s).name for s in meta["Sources"]}
    assert {f"sub-01_ses-baseline_task-rest_space-{SPACE}_desc-preproc_bold.nii.gz",
            f"sub-01_ses-baseline_task-rest_space-{SPACE}_desc-preproc_bold.json",
            f"sub-01_ses-baseline_task-rest_space-{SPACE}_desc-brain_mask.nii.gz",
            "sub-01_ses-baseline_task-rest_desc-confounds_timeseries.tsv",
            "sub-01_ses-baseline_task-rest_desc-confounds_timeseries.json"} == sources
    assert all(prep in s for s in meta["Sources"])
    assert meta["Input"] == "fmriprep" and meta["InputSpace"] == SPACE
    assert "MNI152NLin2009aSym" in meta["SpaceNote"]
    par = meta["Parameters"]
    assert par["func"]["input"] == "fmriprep" and par["input"]["space"] == SPACE
    assert par["func"]["fmriprep_dir"] == str(bids / "derivatives/fmriprep")
    assert meta["Strategy"] == "acompcor+scrubbing"
    # the regressors nilearn took from the TSV: WM / CSF CompCor (JSON masks), motion, cosines
    reg = par["denoising"]["regressors"]
    print(f"{len(reg)} regressors: {reg}")
    assert {f"{p}_comp_cor_{j:02d}" for p in "wc" for j in range(5)} <= set(reg)
    assert {"trans_x", "rot_z_derivative1", "cosine00"} <= set(reg)
    assert not any(r.startswith(("a_comp_cor", "t_comp_cor", "global_signal")) for r in reg)
    # the confounds table: fMRIPrep's columns, censored = non-steady-state volume + FD spikes
    conf = pd.read_csv(_func(out, "baseline", "desc-confounds_timeseries.tsv"), sep="\t",
                       na_values="n/a")
    assert len(conf) == N_VOL and {"w_comp_cor_00", "rmsd", "censored"} <= set(conf)
    assert np.flatnonzero(conf["censored"]).tolist() == [0, *SPIKES]
    row = pd.read_csv(_func(out, "baseline", "desc-summary_bold.tsv"), sep="\t").iloc[0]
    print(f"baseline: {row.n_censored} censored, {row.minutes_kept:.2f} min kept, dof {row.dof:.0f}, "
          f"mean FD {row.mean_fd_mm:.3f} mm, {row.n_regions_valid}/{row.n_regions} regions")
    assert row.excluded == 0 and row.n_censored == 4 and row.n_kept == N_VOL - 4
    assert row.repetition_time_s == TR and row.n_regions_valid == row.n_regions == 160
    assert row.mean_fd_mm == pytest.approx(conf["framewise_displacement"].mean())
    den = pd.read_csv(
        _func(out, "baseline", "seg-dosenbach_desc-denoised_timeseries.tsv"), sep="\t"
    )
    assert den.shape == (N_VOL - 4, 160)


def _denoised_r(out: Path) -> pd.DataFrame:
    """Pearson correlation of the denoised region time series (no shrinkage)."""
    den = pd.read_csv(_func(out, "baseline", "seg-dosenbach_desc-denoised_timeseries.tsv"),
                      sep="\t")
    return den.corr()


@pytest.mark.integration
def test_planted_edge_is_recovered_and_unrelated_regions_are_not_correlated(fmriprep_run):
    """The matrix is nilearn's correlation of the Ledoit-Wolf covariance (as in the raw mode).

    With 160 regions and 146 volumes the shrinkage is strong, so the planted
    pair is checked in the matrix by rank and in the plain Pearson correlation
    of the denoised time series by value.
    """
    _, _, out = fmriprep_run
    m = _matrix(out)
    regions = pd.read_csv(_func(out, "baseline", "seg-dosenbach_dseg.tsv"), sep="\t")
    assert list(m.index) == regions["name"].tolist() and m.shape == (160, 160)
    raw = pd.read_csv(_func(out, "baseline", "seg-dosenbach_desc-raw_timeseries.tsv"), sep="\t")
    assert (raw.to_numpy() % 1 != 0).mean() > 0.5  # int16 run: region means not truncated
    far = _far_pairs(regions)
    r = _denoised_r(out)
    pair_m, pair_r = m.loc[PAIR[0], PAIR[1]], r.loc[PAIR[0], PAIR[1]]
    far_m, far_r = m.to_numpy()[far], r.to_numpy()[far]
    print(f"planted pair: Pearson r {pair_r:.3f} (expected {SHARED**2 / (SHARED**2 + NOISE**2 / 9):.2f}), "
          f"matrix {pair_m:.3f}; {far.sum()} unrelated pairs: Pearson mean {far_r.mean():+.3f}, "
          f"95th percentile |r| {np.percentile(np.abs(far_r), 95):.3f} (1.96 / sqrt(146) = 0.16); "
          f"matrix max {far_m.max():.3f}")
    # measured 0.886 / 0.185; unrelated mean -0.000, 95th percentile 0.185, matrix max 0.085
    assert pair_r > 0.8 and abs(far_r.mean()) < 0.02 and np.percentile(np.abs(far_r), 95) < 0.22
    assert pair_m > 0.1 and pair_m > far_m.max() + 0.05


@pytest.mark.integration
def test_confounds_come_from_the_tsv(fmriprep_run, tmp_path):
    """The planted confound (w_comp_cor_00) is removed by acompcor, not by 24P."""
    root, bids, out = fmriprep_run
    cfg = tmp_path / "24P.yaml"
    cfg.write_text(CONFIG + "  strategy: 24P\n")
    out2 = tmp_path / "derivatives"
    code = _cli(
        bids,
        out2,
        "participant",
        "--session-label",
        "baseline",
        "--stages",
        "func",
        "--config",
        cfg,
        "--work-dir",
        root / "work",
    )  # regions from Nipype's cache
    assert code == 0
    regions = pd.read_csv(_func(out, "baseline", "seg-dosenbach_dseg.tsv"), sep="\t")
    far = _far_pairs(regions)
    r_acompcor, r_24p = (_denoised_r(o).to_numpy()[far].mean() for o in (out, out2))
    m_acompcor, m_24p = (_matrix(o).to_numpy()[far].mean() for o in (out, out2))
    expected = CONFOUND**2 / (CONFOUND**2 + NOISE**2 / 9)  # ~9 voxels per 5 mm sphere at 4 mm
    print(f"unrelated regions, mean Pearson r: {r_acompcor:+.3f} with acompcor (w_comp_cor_00 "
          f"regressed) vs {r_24p:+.3f} with 24P (not regressed; expected about {expected:.2f}); "
          f"matrix means {m_acompcor:+.3f} vs {m_24p:+.3f}")
    # measured -0.000 vs 0.85
    assert abs(r_acompcor) < 0.02 and r_24p > 0.7 and abs(m_acompcor) < 0.01 and m_24p > 0.5
    meta = json.loads(_func(out2, "baseline", "desc-summary_bold.json").read_text())
    den = meta["Parameters"]["denoising"]
    assert len(den["regressors"]) == 24 and "w_comp_cor_00" not in den["regressors"]
    assert den["strategy"] == "24P+scrubbing"


@pytest.mark.integration
def test_run_with_too_much_motion_is_excluded(fmriprep_run):
    """m06: FD > 0.5 mm from volume 20 on; no fMRIPrep sidecar (raw TR) and no mask."""
    _, _, out = fmriprep_run
    row = pd.read_csv(_func(out, "m06", "desc-summary_bold.tsv"), sep="\t").iloc[0]
    print(f"m06: {row.n_kept} of {row.n_volumes} volumes kept; {row.exclusion_reason}")
    assert row.excluded == 1 and row.n_kept == 19  # volume 0 is non-steady-state
    assert "only 19 of 150 volumes (38 s) left" in row.exclusion_reason
    assert "at least 240 s required" in row.exclusion_reason
    assert not list(_func(out, "m06", "x").parent.glob("*_relmat.tsv"))
    assert _func(out, "m06", "seg-dosenbach_desc-raw_timeseries.tsv").exists()
    meta = json.loads(_func(out, "m06", "desc-summary_bold.json").read_text())
    assert meta["Excluded"] is True and row.repetition_time_s == TR
    assert "sub-01_ses-m06_task-rest_bold.json" in {Path(s).name for s in meta["Sources"]}
    notes = " ".join(meta["Parameters"]["input_warnings"])
    assert "RepetitionTime from the raw sidecar" in notes and "no fMRIPrep brain mask" in notes


@pytest.mark.integration
def test_missing_fmriprep_files_name_the_expected_path(fmriprep_run, tmp_path, capsys):
    from pipeline.errors import InputError
    from workflows.func import fmriprep_inputs

    _, bids, _ = fmriprep_run
    prep = tmp_path / "fmriprep"
    src = bids / "derivatives/fmriprep/sub-01/ses-baseline/func"
    shutil.copytree(src, prep / "sub-01/ses-baseline/func",
                    ignore=shutil.ignore_patterns("*_desc-confounds_timeseries.*"))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("derivatives/fmriprep   # relative to the BIDS dir", str(prep)))
    code = _cli(bids, tmp_path / "out", "participant", "--session-label", "baseline",
                "--stages", "func", "--config", cfg, "--work-dir", tmp_path / "work")
    err = capsys.readouterr().err
    expected = (
        prep
        / "sub-01/ses-baseline/func/sub-01_ses-baseline_task-rest_desc-confounds_timeseries.tsv"
    )
    assert code == 1 and str(expected) in err and "confounds file" in err, err
    with pytest.raises(InputError, match=r"sub-01_ses-m06_task-rest_space-MNI152NLin2009cAsym_"
                                         r"desc-preproc_bold\.nii\.gz.*not found"):
        fmriprep_inputs(prep, "01", "m06", space=SPACE)
    with pytest.raises(InputError, match="fmriprep_dir"):
        fmriprep_inputs(tmp_path / "nowhere", "01", "baseline", space=SPACE)


def test_fmriprep_confound_set_dummies_and_neighbours(tmp_path):
    """Dummy volumes cut from every output; scrub_after extends nilearn's censoring."""
    from pipeline.func.confounds import fmriprep_confound_set

    rng = np.random.default_rng(0)
    func = tmp_path / "sub-01/ses-baseline/func"
    func.mkdir(parents=True)
    fd = np.full(60, 0.1)
    fd[30] = 1.0
    table, meta = _confounds(rng, fd, rng.standard_normal(60))
    stem = "sub-01_ses-baseline_task-rest"
    table.to_csv(
        func / f"{stem}_desc-confounds_timeseries.tsv", sep="\t", index=False, na_rep="n/a"
    )
    (func / f"{stem}_desc-confounds_timeseries.json").write_text(json.dumps(meta))
    bold = func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz"
    cs = fmriprep_confound_set(bold, "acompcor", scrubbing=True, after=2, min_segment=0,
                               n_dummy=3)
    assert len(cs.table) == len(cs.regressors) == cs.sample_mask.size == 57
    assert np.flatnonzero(~cs.sample_mask).tolist() == [27, 28, 29]  # volumes 30, 31, 32
    assert cs.strategy == "acompcor+scrubbing" and "non-steady-state" in cs.notes[0]
    assert {"w_comp_cor_04", "c_comp_cor_04", "cosine02"} <= set(cs.regressors)


def test_fmriprep_workflow_builds_without_structural_inputs(tmp_path):
    from pipeline.config import load_config
    from workflows.func import init_func_fmriprep_wf

    files = {k: tmp_path / f"{k}.x" for k in ("bold", "confounds")}
    for path in files.values():
        path.touch()
    files = {**{k: str(v) for k, v in files.items()}, "bold_json": None, "confounds_json": None,
             "mask": None, "sources": [], "notes": []}
    cfg = load_config(overrides={"func": {"input": "fmriprep", "fmriprep_dir": "fp"}}).to_dict()
    wf = init_func_fmriprep_wf(config=cfg, files=files, subject="01", session="baseline",
                               output_dir=str(tmp_path / "out"))
    assert {n.name for n in wf._get_all_nodes()} == {
        "load", "confounds", "regions", "denoise", "connectomes", "qc", "derivatives"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"input": "fmriprep"}, "func.input is fmriprep: set func.fmriprep_dir"),
        ({"fmriprep_dir": "fmriprep"}, "only used with func.input: fmriprep"),
    ],
)
def test_fmriprep_dir_is_checked(overrides, message):
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"'func.fmriprep_dir'.*{message}"):
        load_config(overrides={"func": overrides})

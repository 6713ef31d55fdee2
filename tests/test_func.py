"""Resting-state fMRI science functions on the tiny phantom (pipeline.func).

The phantom BOLD (4 mm, 100 volumes, TR 2 s, Dosenbach atlas, 10 planted edges)
is realigned with :func:`preprocess_bold`; the realigned run (in the frame of the
reference, which is the phantom's rest pose up to sub-voxel jitter) is resampled
into MNI space with the phantom's *true* mapping
(``subject.from_template(session, "bold")``), standing in for the structural
transforms the workflow will use.  Regions are 6 mm spheres on nilearn's
Dosenbach coordinates.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.errors import InputError
from pipeline.func import confounds as fc
from pipeline.func.connectome import (
    connectivity,
    extract_region_timeseries,
    group_connectivity,
    label_parcellation,
    sphere_parcellation,
)
from pipeline.func.preprocess import preprocess_bold, slice_timing_correct

TR = 2.0
DEFAULT = {"strategy": "36P", "fd_threshold": 0.5, "high_pass": 0.01, "low_pass": 0.08}


def _mni_grid():
    from pipeline.templates import load_mni_template

    tpl = load_mni_template(2)
    aff = tpl.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    shape = tuple(int(np.ceil(s / 2)) for s in tpl.shape)
    sub = (slice(None, None, 2),) * 3
    return tpl, aff, shape, sub


def _to_mni(pre, ph):
    """Realigned BOLD -> 4 mm MNI grid with the phantom's true mapping (trilinear)."""
    from scipy import ndimage

    tpl, aff, shape, sub = _mni_grid()
    world = np.indices(shape).reshape(3, -1).T @ aff[:3, :3].T + aff[:3, 3]
    scanner = ph.subject.from_template(ph.session, "bold")(world)
    inv = np.linalg.inv(pre.affine)
    vox = (scanner @ inv[:3, :3].T + inv[:3, 3]).T
    data = np.stack(
        [
            ndimage.map_coordinates(pre.data[..., k], vox, order=1, mode="constant")
            for k in range(pre.n_volumes)
        ],
        axis=-1,
    ).reshape(*shape, pre.n_volumes)
    mean = data.mean(axis=-1)
    brain = np.asarray(tpl.brain)[sub]
    mask = brain & (mean > 0.2 * np.percentile(mean[brain], 98))
    wm = ndimage.binary_erosion(np.asarray(tpl.wm)[sub] >= 0.9) & mask
    csf = (np.asarray(tpl.csf)[sub] >= 0.9) & mask
    img = nib.Nifti1Image(data.astype(np.float32), aff)
    img.header.set_zooms((4.0, 4.0, 4.0, TR))
    return img, mask, wm, csf


@pytest.fixture(scope="module")
def runs(tiny_phantom_sessions):
    """Per session: preprocessing, MNI image, masks, confounds, raw region time series."""
    out = {}
    parc = sphere_parcellation("dosenbach", radius_mm=6.0)
    for ph in tiny_phantom_sessions:
        pre = preprocess_bold(ph.images["bold"])
        img, mask, wm, csf = _to_mni(pre, ph)
        data = np.asarray(img.dataobj)
        conf = fc.compute_confounds(
            data, pre.motion_params, brain_mask=mask, wm_mask=wm, csf_mask=csf,
            framewise_displacement=pre.framewise_displacement, std_dvars=pre.std_dvars,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rts = extract_region_timeseries(
                img, parc, mask_img=nib.Nifti1Image(mask.astype(np.uint8), img.affine)
            )
        out[ph.session] = {"ph": ph, "pre": pre, "data": data, "mask": mask, "conf": conf,
                           "rts": rts}
    return out


def _denoised(run, strategy=DEFAULT["strategy"], *, low_pass=DEFAULT["low_pass"], scrub=True):
    res = fc.denoise_with_strategy(
        run["rts"].timeseries.to_numpy(), run["conf"], strategy, tr=TR, scrubbing=scrub,
        fd_threshold=DEFAULT["fd_threshold"], high_pass=DEFAULT["high_pass"], low_pass=low_pass,
        min_duration_s=120.0,  # the tiny run lasts 200 s (< the 240 s default)
    )
    assert not res.excluded and res.strategy == strategy + ("+scrubbing" if scrub else "")
    return res


# --------------------------------------------------------------------------- preprocessing


def test_realignment_recovers_motion(runs):
    run = runs["m06"]
    true = np.array(run["ph"].truth["bold"]["motion_params"])
    est = run["pre"].motion_params
    mm = true.copy()
    mm[:, 3:] *= 50.0  # rotations as arc length at 50 mm
    moving = mm.std(axis=0) > 0.03  # non-trivial motion (mm-equivalent SD)
    assert moving.sum() >= 4
    r = np.array([np.corrcoef(true[:, k], est[:, k])[0, 1] for k in range(6)])
    print("motion r (tx ty tz rx ry rz):", np.round(r, 3), "SD mm-eq:", np.round(mm.std(0), 3))
    assert np.all(r[moving] >= 0.9), r
    # errors well below the 4 mm voxel, FD spikes found
    err = np.abs((est - est[:5].mean(0)) - (true - true[:5].mean(0)))
    assert err[:, :3].max() < 0.5 and err[:, 3:].max() < np.deg2rad(0.5)
    fd_true = np.array(run["ph"].truth["bold"]["framewise_displacement"])
    assert np.corrcoef(fd_true, run["pre"].framewise_displacement)[0, 1] > 0.8
    assert run["pre"].dvars.shape == (100,) and run["pre"].std_dvars[0] == 0
    assert run["pre"].mask.sum() > 1000 and not run["pre"].slice_timing_corrected


def test_dummy_removal_and_bad_input(tiny_phantom_sessions, tmp_path):
    img = tiny_phantom_sessions[0].images["bold"]
    path = tmp_path / "sub-01_bold.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., 0], img.affine), path)
    with pytest.raises(InputError, match=r"sub-01_bold\.nii\.gz.*4-D"):
        preprocess_bold(path)
    short = nib.Nifti1Image(np.asarray(img.dataobj)[..., :12], img.affine)
    short.header.set_zooms((4.0, 4.0, 4.0, TR))
    res = preprocess_bold(short, n_dummy=2, min_volumes=10)
    assert res.n_volumes == 10 and res.n_dummy == 2 and res.tr == TR
    with pytest.raises(InputError, match="at least 10 volumes"):
        preprocess_bold(short, n_dummy=3, min_volumes=10)


def test_slice_timing_linear_interpolation():
    # a voxel signal linear in time is shifted exactly to the reference time
    t = np.arange(20) * TR
    st = np.array([0.0, 0.5, 1.0, 1.5])
    data = np.zeros((1, 1, 4, 20), np.float32)
    for s in range(4):
        data[0, 0, s] = 3.0 * (t + st[s])  # sampled at acquisition times
    out = slice_timing_correct(data, st, TR, slice_time_ref=0.5)
    expected = 3.0 * (t + 1.0)
    for s in range(4):
        np.testing.assert_allclose(out[0, 0, s, 1:-1], expected[1:-1], atol=1e-4)
    with pytest.raises(InputError, match="SliceTiming"):
        slice_timing_correct(data, st[:3], TR)


# --------------------------------------------------------------------------- connectivity


def test_connectome_recovers_population_correlation(runs):
    rs = {}
    for ses, run in runs.items():
        pop = run["ph"].tables["bold_population_correlation"]
        assert list(pop.index) == run["rts"].regions["label"].tolist()  # same atlas labels
        assert run["rts"].valid.all()
        iu = np.triu_indices(len(pop), 1)
        for name, strategy, lp in (("acompcor_hp", "acompcor", None), ("default", "36P", 0.08)):
            den = _denoised(run, strategy, low_pass=lp)
            m = connectivity(den.signals, regions=run["rts"].regions).matrix
            assert m.shape == (160, 160) and list(m.index) == list(pop.index)
            rs[ses, name] = np.corrcoef(m.to_numpy()[iu], pop.to_numpy()[iu])[0, 1]
    print("r(recovered, population):", {k: round(v, 3) for k, v in rs.items()})
    # aCompCor + 6P + derivatives, high-pass only: about 0.57 on both sessions
    assert rs["baseline", "acompcor_hp"] >= 0.45 and rs["m06", "acompcor_hp"] >= 0.45
    assert rs["baseline", "default"] > 0 and rs["m06", "default"] > 0


def test_planted_edges_rise_at_follow_up(runs):
    # aCompCor + 6P + derivatives with high-pass only: the default 36P with the 0.01-0.08 Hz
    # band leaves about 100 * 0.07 / 0.25 - 37 = -9 residual degrees of freedom on this
    # 100-volume run (the workflow warns below 15), and its planted-edge mean z swung from
    # -0.51 to +0.75 between two realignments that differ by < 0.15 mm.
    z = {}
    for ses, run in runs.items():
        edges = np.array(run["ph"].truth["bold"]["planted_edges"])
        den = _denoised(run, "acompcor", low_pass=None)
        assert den.dof > 15
        m = connectivity(den.signals, kind="fisher_z").matrix.to_numpy()
        iu = np.triu_indices(len(m), 1)
        z[ses] = (m[edges[:, 0], edges[:, 1]].mean(), m[iu].mean())
    print("planted mean z / all-edge mean z:", z)
    rise = runs["m06"]["ph"].truth["bold"]["planted_correlation_rise"]
    assert rise > 0.2
    assert z["m06"][0] - z["baseline"][0] > 0.15
    # relative to the whole matrix too (not a global shift)
    assert (z["m06"][0] - z["m06"][1]) - (z["baseline"][0] - z["baseline"][1]) > 0.15


def test_denoising_reduces_motion_signal_coupling(runs):
    """QC-FC style: |corr(FD, DVARS)| of brain voxels falls after the default denoising."""
    for run in runs.values():
        vox = run["data"][run["mask"]][::3].T  # (T, V), every third brain voxel (speed)
        fd = run["pre"].framewise_displacement
        conf = fc.select_confounds(run["conf"], "36P")

        def coupling(x, keep, vox=vox, fd=fd):
            x = x / np.abs(vox.mean(axis=0))
            dvars = np.sqrt(np.mean(np.diff(x, axis=0) ** 2, axis=1))
            return abs(np.corrcoef(fd[keep][1:], dvars)[0, 1])

        keep = fc.scrubbing_mask(fd, fd_threshold=0.5)
        raw = coupling(vox - vox.mean(0), np.ones(len(fd), bool))
        den = fc.denoise(vox, conf, tr=TR, sample_mask=keep, standardize=False, min_duration_s=0)
        after = coupling(den.signals, keep)
        print(run["ph"].session, f"|corr(FD, DVARS)| raw {raw:.2f} -> 36P+scrub {after:.2f}")
        assert raw > 0.4 and after < raw - 0.25


def test_tangent_group_connectivity(runs):
    ts = [_denoised(run).signals for run in runs.values()]
    ts[1] = ts[1].copy()
    ts[1][:, 3] = np.nan  # one run without coverage of region 3
    per, mean = group_connectivity(ts, kind="tangent")
    assert len(per) == 2 and mean.matrix.shape == (160, 160)
    assert (
        np.isnan(mean.matrix.to_numpy()[3]).all() and np.isnan(per[0].matrix.to_numpy()[:, 3]).all()
    )
    ok = np.delete(np.arange(160), 3)
    assert np.isfinite(per[0].matrix.to_numpy()[np.ix_(ok, ok)]).all()
    pc = connectivity(ts[0], kind="partial correlation").matrix.to_numpy()
    assert np.allclose(pc, pc.T, equal_nan=True) and np.allclose(np.diag(pc), 1)


# --------------------------------------------------------------------------- confounds


def test_scrubbing_excludes_short_runs(runs):
    fd = runs["m06"]["pre"].framewise_displacement
    keep = fc.scrubbing_mask(fd, fd_threshold=0.5, before=1, after=2)
    plain = fc.scrubbing_mask(fd, fd_threshold=0.5)
    assert (fd[~plain] > 0.5).all() and keep.sum() < plain.sum()
    assert fc.scrubbing_mask(np.r_[0, 0, 0, 1, 0, 0, 0, 0, 0, 0], min_segment=4).tolist() == [
        False, False, False, False, True, True, True, True, True, True,
    ]
    ts = runs["m06"]["rts"].timeseries.to_numpy()
    res = fc.denoise(ts, None, tr=TR, sample_mask=keep)  # default minimum 240 s > 200 s run
    assert res.excluded and res.signals is None and "240 s required" in res.reason
    strict = fc.scrubbing_mask(fd, fd_threshold=0.05)
    res = fc.denoise(ts, None, tr=TR, sample_mask=strict, min_duration_s=120)
    assert res.excluded and f"only {strict.sum()} of 100 volumes" in res.reason
    ok = fc.denoise(ts, None, tr=TR, sample_mask=plain, min_duration_s=120)
    assert not ok.excluded and ok.signals.shape == (plain.sum(), 160) and ok.dof > 0


def _fmriprep_files(tmp_path, n=60, drop=()):
    rng = np.random.default_rng(0)
    stem = "sub-01_ses-baseline_task-rest_space-MNI152NLin2009cAsym"
    bold = tmp_path / f"{stem}_desc-preproc_bold.nii.gz"
    img = nib.Nifti1Image(rng.normal(100, 1, (4, 4, 4, n)).astype(np.float32), np.eye(4))
    img.header.set_zooms((1, 1, 1, TR))
    nib.save(img, bold)
    cols = {}
    base = [*fc.MOTION_COLUMNS, "white_matter", "csf", "global_signal"]
    for name in base:
        x = np.cumsum(rng.normal(0, 0.05, n))
        for k, v in fc.expand(x, name).items():
            cols[k] = v
    fd = np.abs(rng.normal(0.1, 0.05, n))
    fd[[20, 40]] = 1.2
    cols["framewise_displacement"] = fd
    cols["std_dvars"] = np.abs(rng.normal(1, 0.1, n))
    for i in range(3):  # fMRIPrep's DCT high-pass basis
        cols[f"cosine{i:02d}"] = np.cos(np.pi * (i + 1) * (np.arange(n) + 0.5) / n)
    meta = {}
    for i in range(10):
        cols[f"a_comp_cor_{i:02d}"] = rng.normal(size=n)
        meta[f"a_comp_cor_{i:02d}"] = {"Mask": "WM" if i < 5 else "CSF", "Method": "aCompCor",
                                       "Retained": True}
    table = pd.DataFrame(cols).drop(columns=list(drop))
    for c in table.columns:  # fMRIPrep writes n/a for the first derivative
        if "derivative1" in c:
            table.loc[0, c] = np.nan
    tsv = (
        tmp_path / f"{stem.replace('_space-MNI152NLin2009cAsym', '')}_desc-confounds_timeseries.tsv"
    )
    table.to_csv(tsv, sep="\t", index=False, na_rep="n/a")
    import json

    tsv.with_suffix(".json").write_text(json.dumps(meta))
    return bold, tsv


def test_fmriprep_confound_strategies(tmp_path):
    bold, tsv = _fmriprep_files(tmp_path)
    for strategy, n_cols in (("24P", 24), ("36P", 36), ("acompcor", 25)):
        conf, keep = fc.load_fmriprep_confounds(bold, strategy, n_compcor=5)
        assert conf.shape == (60, n_cols), (strategy, conf.columns.tolist())
        assert keep.all() and np.isfinite(conf.to_numpy()).all()
    assert set(fc.strategy_columns("36P")) == set(fc.load_fmriprep_confounds(bold, "36P")[0])
    conf, keep = fc.load_fmriprep_confounds(bold, "24P", scrubbing=True, min_segment=0)
    assert not keep[20] and not keep[40] and keep.sum() == 58
    # the same strategy from the table directly
    table = pd.read_csv(tsv, sep="\t", na_values="n/a")
    assert fc.select_confounds(table, "36P", source=tsv).shape == (60, 36)


def test_fmriprep_missing_columns_name_the_tsv(tmp_path):
    bold, tsv = _fmriprep_files(tmp_path, drop=("global_signal_power2", "csf"))
    assert fc.load_fmriprep_confounds(bold, "24P")[0].shape == (60, 24)
    with pytest.raises(InputError, match=r"desc-confounds_timeseries\.tsv.*global_signal_power2"):
        fc.load_fmriprep_confounds(bold, "36P")
    with pytest.raises(InputError, match=r"desc-confounds_timeseries\.tsv.*'csf'"):
        fc.select_confounds(pd.read_csv(tsv, sep="\t"), "36P", source=tsv)
    with pytest.raises(ValueError, match="unknown confound strategy"):
        fc.strategy_columns("48P")


# --------------------------------------------------------------------------- parcellations


def test_label_parcellation_coverage_and_errors(tmp_path):
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = -20
    lab = np.zeros((10, 10, 10), np.int16)
    lab[1:4, 1:4, 1:4] = 1
    lab[6:9, 6:9, 6:9] = 2
    lab[1:4, 6:9, 1:4] = 3
    img_path = tmp_path / "atlas.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), img_path)
    tsv = tmp_path / "atlas.tsv"
    pd.DataFrame({"index": [1, 2, 3], "label": ["a", "b", "c"], "network": ["n1", "n1", "n2"]}
                 ).to_csv(tsv, sep="\t", index=False)
    parc = label_parcellation(img_path, tsv)
    assert parc.regions.columns.tolist() == ["index", "label", "x", "y", "z", "network"]
    np.testing.assert_allclose(parc.regions.loc[0, ["x", "y", "z"]].to_numpy(float), [-12] * 3)
    # BOLD covering labels 1 and 2 fully, label 3 only for one of its 3 slices
    rng = np.random.default_rng(1)
    sig = rng.normal(size=(80, 2))
    data = rng.normal(0, 0.1, (10, 10, 10, 80)) + 100
    data[lab == 1] += sig[:, 0]
    data[lab == 2] += sig[:, 0] + 0.5 * sig[:, 1]
    mask = np.ones((10, 10, 10), bool)
    mask[:, :, 2:4] = False
    mask[1:4, 1:4, :] = True  # label 1 fully inside, label 3 a third inside
    bold = nib.Nifti1Image(data.astype(np.float32), aff)
    rts = extract_region_timeseries(
        bold, parc, mask_img=nib.Nifti1Image(mask.astype(np.uint8), aff), min_coverage=0.5
    )
    np.testing.assert_allclose(rts.regions["coverage"], [1.0, 1.0, 1 / 3], atol=1e-6)
    assert rts.valid.tolist() == [True, True, False]
    assert np.isnan(rts.timeseries["c"]).all()
    con = connectivity(rts.timeseries, regions=rts.regions)
    m = con.matrix.to_numpy()
    assert m.shape == (3, 3) and np.isnan(m[2]).all() and np.isnan(m[:, 2]).all()
    assert m[0, 1] > 0.8
    assert len(con.edges()) == 3
    # bad inputs
    pd.DataFrame({"index": [1, 2], "label": ["a", "b"]}).to_csv(tsv, sep="\t", index=False)
    with pytest.raises(InputError, match=r"atlas\.tsv.*missing from the table: \[3\]"):
        label_parcellation(img_path, tsv)
    with pytest.raises(InputError, match="4-D"):
        extract_region_timeseries(nib.Nifti1Image(data[..., 0], aff), parc)


def test_sphere_parcellations_offline():
    for name, n in (("power", 264), ("dosenbach", 160), ("seitzman", 300)):
        p = sphere_parcellation(name, radius_mm=5.0)
        assert p.n_regions == n and p.regions["label"].is_unique
        assert set(p.regions.columns) == {"index", "label", "x", "y", "z", "network"}
        from pipeline.phantom.bold import load_coordinate_atlas  # same labels / networks

        ref = load_coordinate_atlas(name)
        assert p.labels == list(ref.labels) and list(p.regions["network"]) == list(ref.networks)
        np.testing.assert_allclose(p.coords, ref.coords)


def test_qc_figures(runs):
    from pipeline.func import qc

    run = runs["m06"]
    fd = run["pre"].framewise_displacement
    den = _denoised(run)
    figs = [
        qc.plot_carpet(run["data"], run["mask"], tr=TR, fd=fd, title="raw"),
        qc.plot_carpet(den.signals, None, tr=TR, title="denoised regions"),
        qc.plot_fd(fd, tr=TR, threshold=0.5, sample_mask=den.sample_mask),
        qc.plot_connectome_matrix(
            connectivity(den.signals).matrix, networks=run["rts"].regions["network"]
        ),
    ]
    for fig in figs:
        assert len(fig.axes) >= 1


def test_identical_volumes_realign_to_no_motion(tiny_phantom_sessions):
    """A series without any change (all volumes identical) is realigned to zero motion."""
    img = tiny_phantom_sessions[0].images["bold"]
    vol = np.asarray(img.dataobj, dtype=np.float32)[..., :1]
    same = nib.Nifti1Image(np.repeat(vol, 12, axis=3), img.affine)
    same.header.set_zooms((4.0, 4.0, 4.0, TR))
    pre = preprocess_bold(same)
    assert np.abs(pre.motion_params).max() < 1e-6 and pre.framewise_displacement.max() < 1e-6
    assert np.allclose(pre.dvars, 0.0, atol=1e-3) and np.allclose(pre.dvars_raw, 0.0)

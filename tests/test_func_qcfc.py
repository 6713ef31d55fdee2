"""QC-FC (pipeline.func.qcfc): the statistic itself and denoising on a phantom cohort.

The cohort: 16 phantom BOLD runs (4 mm, 100 volumes, TR 2 s, Dosenbach spheres,
no planted effect) whose head motion grows tenfold from the first run to the
last (mean FD 0.04 to 0.58 mm). The motion drives the phantom's spin-history
artefact at the brain's periphery (5 % per mm of FD here, the module default is
3 %) while the head stays in place (``displace=False``: the run as an ideal
realignment would leave it; realignment itself is tested in test_func.py), and
the phantom's motion parameters stand in for the realignment estimates. Without
denoising, edge strength tracks mean FD across runs; after the pipeline's
default strategy (aCompCor + 24 motion terms, FD scrubbing at 0.5 mm) it must not.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage, stats

from pipeline.func import confounds as fc
from pipeline.func.qcfc import qc_fc

TR = 2.0
N_RUNS = 16


def test_qcfc_matches_per_edge_pearson_and_handles_missing_regions():
    rng = np.random.default_rng(3)
    n, r = 12, 6
    fd = rng.uniform(0.05, 0.6, n)
    mats = rng.normal(size=(n, r, r))
    mats = (mats + mats.transpose(0, 2, 1)) / 2
    mats[:, 0, 1] = mats[:, 1, 0] = 2.0 * fd + rng.normal(0, 0.05, n)  # planted motion coupling
    mats[3, 4, :] = mats[3, :, 4] = np.nan  # region 4 not covered in run 3
    coords = rng.uniform(-60, 60, (r, 3))
    res = qc_fc(fd, mats, coordinates=coords)
    for k, (i, j) in enumerate(zip(res.i, res.j, strict=True)):
        y = mats[:, i, j]
        ok = np.isfinite(y)
        ref = stats.pearsonr(fd[ok], y[ok])
        assert res.n_runs[k] == ok.sum()
        assert res.r[k] == pytest.approx(ref.statistic, abs=1e-12)
        assert res.p[k] == pytest.approx(ref.pvalue, rel=1e-9)
        assert res.distance_mm[k] == pytest.approx(np.linalg.norm(coords[i] - coords[j]))
    from statsmodels.stats.multitest import multipletests

    assert np.allclose(res.p_fdr, multipletests(res.p, method="fdr_bh")[1])
    first = (res.i == 0) & (res.j == 1)
    assert res.r[first][0] > 0.95 and res.p_fdr[first][0] < 0.05
    summ = res.summary()
    assert summ["n_edges"] == 15 and summ["n_runs_max"] == n
    assert summ["distance_dependence_spearman"] == pytest.approx(
        stats.spearmanr(res.r, res.distance_mm).statistic
    )


def test_qcfc_bad_input_is_refused():
    with pytest.raises(ValueError, match="one per run"):
        qc_fc(np.ones(3), np.zeros((4, 5, 5)))
    with pytest.raises(ValueError, match=r"\(N, R, R\)"):
        qc_fc(np.ones(4), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="non-finite"):
        qc_fc([0.1, np.nan, 0.2, 0.3, 0.4], np.zeros((5, 3, 3)))
    few = qc_fc(np.arange(4.0), np.random.default_rng(0).normal(size=(4, 3, 3)))
    assert np.all(np.isnan(few.r))  # fewer than min_runs runs: untestable, not a number


@pytest.fixture(scope="module")
def cohort():
    """Raw and denoised Fisher-z matrices and mean FD of the 16 runs."""
    from pipeline.func.connectome import extract_region_timeseries, sphere_parcellation
    from pipeline.motion import simulate_motion_trace
    from pipeline.phantom.bold import (
        choose_planted_subnetwork,
        load_coordinate_atlas,
        load_mni_tissue_maps,
        network_loadings,
        simulate_bold,
    )
    from pipeline.phantom.trial import FOV, acquisition_grid

    gm, wm, csf, taff = load_mni_tissue_maps(2)
    atlas = load_coordinate_atlas("dosenbach")
    loadings = network_loadings(atlas, rng=np.random.default_rng(1))
    edges = choose_planted_subnetwork(atlas, n_regions=8, n_edges=10, rng=np.random.default_rng(0))
    shape, aff = acquisition_grid(FOV["bold"], 4.0, "RAS")
    # tissue on the BOLD grid (scanner frame = MNI here) for the masks
    inv = np.linalg.inv(taff)
    world = np.indices(shape).reshape(3, -1).T @ aff[:3, :3].T + aff[:3, 3]
    vox = (world @ inv[:3, :3].T + inv[:3, 3]).T
    g, w, c = (ndimage.map_coordinates(m, vox, order=1).reshape(shape) for m in (gm, wm, csf))
    parc = sphere_parcellation("dosenbach", radius_mm=6.0)
    out = {"fd": [], "raw": [], "denoised": [], "coords": np.asarray(atlas.coords)}
    for k, scale in enumerate(np.linspace(0.2, 3.0, N_RUNS)):
        rng = np.random.default_rng(100 + k)
        motion = simulate_motion_trace(
            100, rng=rng, n_spikes=round(3 * scale) + 1, spike_mm=(0.4 * scale, scale),
            jitter_mm=0.04 * scale,
        )
        ph = simulate_bold(
            grid_shape=shape, grid_affine=aff, to_template=lambda p: p, template_affine=taff,
            gm=gm, wm=wm, csf=csf, atlas=atlas, edges=edges, effect=0.0, n_volumes=100, tr=TR,
            rng=rng, motion=motion, loadings=loadings, displace=False, motion_artefact_pct=5.0,
        )
        data = np.asarray(ph.image.dataobj, dtype=np.float32)
        mean = data.mean(axis=-1)
        mask = (g + w + c > 0.5) & (mean > 0.2 * np.percentile(mean, 98))
        conf = fc.compute_confounds(
            data, ph.motion, brain_mask=mask, wm_mask=ndimage.binary_erosion(w >= 0.9) & mask,
            csf_mask=(c >= 0.9) & mask, framewise_displacement=ph.fd,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rts = extract_region_timeseries(
                nib.Nifti1Image(data, aff), parc,
                mask_img=nib.Nifti1Image(mask.astype(np.uint8), aff),
            )
        x = rts.timeseries.to_numpy()
        den = fc.denoise_with_strategy(
            x, conf, "acompcor", tr=TR, scrubbing=True, fd_threshold=0.5, high_pass=0.01,
            low_pass=None, min_duration_s=60.0,  # 100 volumes: high-pass only (see test_func)
        )
        assert not den.excluded
        out["fd"].append(float(ph.fd.mean()))
        for key, ts in (("raw", x), ("denoised", den.signals)):
            out[key].append(np.arctanh(np.clip(np.corrcoef(ts.T), -0.999, 0.999)))
    return out


def test_default_denoising_lowers_qcfc(cohort):
    fd = np.array(cohort["fd"])
    assert fd.max() / fd.min() > 8  # the cohort spans a wide range of motion
    res = {
        k: qc_fc(fd, np.array(cohort[k]), coordinates=cohort["coords"]) for k in ("raw", "denoised")
    }
    for k, r in res.items():
        print(k, {a: round(b, 3) for a, b in r.summary().items() if isinstance(b, float)})
    raw, den = res["raw"], res["denoised"]
    # 16 runs: with no motion coupling, |r| has median ~0.17 and 5 % of edges have p < 0.05
    # measured raw 0.24 / 17 % (5.7 % after FDR), denoised 0.19 / 5.6 % (0 after FDR)
    assert raw.fraction_significant > 0.12 and raw.fraction_significant_fdr > 0.02
    assert den.fraction_significant < 0.08 and den.fraction_significant_fdr < 0.005
    assert den.median_abs_r < raw.median_abs_r - 0.03
    # the motion coupling raised edge strength (positive QC-FC), denoising removed the shift
    assert np.median(raw.r) > 0.1 and abs(np.median(den.r)) < 0.05

"""NBS power analysis (pipeline.stats.nbs_power) and the trial's planted subnetwork.

The power analysis is checked against direct simulation of the resting-state
phantom (the reduced, region-level simulation of the trial preset:
:func:`pipeline.phantom.trial.simulate_region_connectomes`), and the trial's
planted subnetwork against the issue's targets where the design allows them.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from pipeline.phantom.bold import population_correlation
from pipeline.phantom.trial import PRESETS, bold_design, simulate_region_connectomes
from pipeline.stats.nbs import NetworkBasedStatistic
from pipeline.stats.nbs_power import ChangeNoise, _Wishart, nbs_power, random_subnetwork

TRIAL = PRESETS["trial"]
LAST = len(TRIAL.sessions) - 1


def _scores(res, planted: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float, bool]:
    """detection, recall, precision (NaN without a significant edge), any significant."""
    iu = np.triu_indices(planted.shape[0], 1)
    found, truth = res.edge_mask(alpha)[iu], planted[iu]
    tp = int((found & truth).sum())
    prec = tp / found.sum() if found.sum() else math.nan
    return float(tp > 0), tp / truth.sum(), prec, bool(found.any())


def _planted_mask(design) -> np.ndarray:
    m = design.atlas.n_regions
    mask = np.zeros((m, m), dtype=bool)
    for i, j in design.edges:
        mask[i, j] = mask[j, i] = True
    return mask


def _direct(spec, n: int, seeds, threshold: float, threshold_type: str = "p") -> np.ndarray:
    """Direct simulation: (len(seeds), 4) scores of the one-sided NBS on synthetic trials."""
    design = bold_design(spec)
    planted = _planted_mask(design)
    rows = []
    for seed in seeds:
        base = simulate_region_connectomes(spec, n, 0, seed=seed)
        follow = simulate_region_connectomes(spec, n, len(spec.sessions) - 1, seed=seed)
        res = NetworkBasedStatistic(threshold, threshold_type=threshold_type, alternative="greater",
                                    n_permutations=1000, random_state=seed).fit_paired(base, follow)
        rows.append(_scores(res, planted))
    return np.array(rows, dtype=float)


# ------------------------------------------------------------------ building blocks


def test_random_subnetwork_is_connected_with_the_requested_size():
    rng = np.random.default_rng(0)
    nodes = np.arange(5, 60)
    for k, m in ((2, 1), (10, 9), (10, 20), (30, 40), (6, 15)):
        edges = random_subnetwork(nodes, k, m, rng)
        g = nx.Graph(edges)
        assert g.number_of_nodes() == k and g.number_of_edges() == m and nx.is_connected(g)
        assert set(g.nodes) <= set(nodes.tolist()) and all(i < j for i, j in edges)
    with pytest.raises(ValueError, match="edges"):
        random_subnetwork(nodes, 10, 8, rng)
    with pytest.raises(ValueError, match="regions"):
        random_subnetwork(nodes, 100, 120, rng)


def test_change_noise_estimates_sd_and_the_wishart_degrees_of_freedom():
    """Per-edge SD equals numpy's; n_eff recovered from sample correlations of 40 draws."""
    rng = np.random.default_rng(1)
    m, n_draws, n_sub = 30, 40, 8
    pop = 0.3 * np.ones((m, m)) + 0.7 * np.eye(m)
    root = np.linalg.cholesky(pop).T

    def sample():
        x = rng.standard_normal((n_draws, m)) @ root
        return np.arctanh(np.clip(np.corrcoef(x, rowvar=False), -1 + 1e-7, 1 - 1e-7))

    base = np.array([sample() for _ in range(n_sub)])
    follow = np.array([sample() for _ in range(n_sub)])
    noise = ChangeNoise.from_paired(base, follow, measure="fisher_z")
    d = follow - base
    iu = np.triu_indices(m, 1)
    assert np.allclose(noise.sd[iu], d.std(axis=0, ddof=1)[iu])
    assert np.isnan(np.diag(noise.sd)).all() and noise.n_subjects == n_sub
    assert noise.n_effective == pytest.approx(n_draws, rel=0.1)
    mean_r = noise.mean_correlation[iu]  # 16 sample matrices: SD about 0.03 per entry
    assert abs(mean_r.mean() - 0.3) < 0.02 and np.abs(mean_r - 0.3).max() < 0.15
    # the model's own simulated change has the study's variance
    sim = _Wishart(noise, np.arange(m)).changes(200, np.random.default_rng(2))
    assert sim.var(axis=0).mean() == pytest.approx((d[:, iu[0], iu[1]] ** 2).mean(), rel=0.15)


def test_change_noise_rejects_bad_input():
    a = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match=">= 3 subjects"):
        ChangeNoise.from_paired(a, a)
    with pytest.raises(ValueError, match="same shape"):
        ChangeNoise.from_paired(np.zeros((3, 4, 4)), np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="do not change"):
        ChangeNoise.from_paired(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), measure="fisher_z")
    noise = ChangeNoise.from_paired(
        np.zeros((3, 4, 4)), np.random.default_rng(0).normal(size=(3, 4, 4))
    )
    with pytest.raises(ValueError, match="wishart"):
        nbs_power(noise, n_subjects=[5], effects=[1.0], thresholds=[3.0], n_regions=3, n_edges=2)
    with pytest.raises(ValueError, match="either edges or"):
        nbs_power(noise, n_subjects=[5], effects=[1.0], thresholds=[3.0], noise_model="gaussian")


def test_raw_and_standardized_effects_agree_and_the_null_keeps_the_fwer():
    """Gaussian model: a raw change of d x SD per edge is the standardised effect d (same
    random numbers, identical table); at effect 0 the family-wise error rate of 200
    simulated studies (exact sign flips, n = 8) is <= 0.05 within Monte Carlo error."""
    rng = np.random.default_rng(3)
    m = 25
    sd = rng.uniform(0.05, 0.3, (m, m))
    sd = (sd + sd.T) / 2
    base = rng.normal(0, 1, (6, m, m))
    follow = base + rng.normal(0, 1, (6, m, m)) * sd
    noise = ChangeNoise.from_paired(base, follow)
    edges = random_subnetwork(np.arange(m), 8, 10, np.random.default_rng(4))
    raw = np.array([noise.sd[i, j] for i, j in edges])
    kw = dict(n_subjects=[8], thresholds=[2.5], edges=edges, noise_model="gaussian",
              n_repetitions=40, random_state=5)
    std = nbs_power(noise, effects=[1.5], **kw).table
    rawt = nbs_power(noise, effects=[1.0], effect_type="raw", edge_effects=1.5 * raw, **kw).table
    cols = ["detection", "recall", "precision", "false_positive"]
    assert np.allclose(std[cols].to_numpy(float), rawt[cols].to_numpy(float), equal_nan=True)
    assert std["detection"].item() > 0.5
    null = nbs_power(noise, n_subjects=[8], effects=[0.0], thresholds=[2.5], n_regions=8,
                     n_edges=10, noise_model="gaussian", n_repetitions=200, random_state=6).table
    fwer = null["false_positive"].item()
    assert null["exact"].item() and fwer <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200), fwer


# ------------------------------------------------------------------ validation on the phantom


@pytest.fixture(scope="module")
def trial_noise():
    """Change noise of a 20-subject reduced trial (baseline vs 6 months)."""
    base = simulate_region_connectomes(TRIAL, 20, 0, seed=990_000)
    follow = simulate_region_connectomes(TRIAL, 20, LAST, seed=990_000)
    return ChangeNoise.from_paired(base, follow, measure="fisher_z")


def test_power_prediction_matches_direct_simulation_of_the_trial(trial_noise):
    """The trial's planted subnetwork (113 regions, 143 edges, the phantom's planted Fisher-z
    change per edge) in the noise estimated from a 20-subject phantom study: predicted
    detection and recall at n = 5 and n = 10 equal those of 60 direct synthetic trials
    each within 3 Monte Carlo standard errors (60 predicted studies per cell)."""
    design = bold_design(TRIAL)
    r0 = population_correlation(design.loadings, design.edges, 0.0)
    r1 = population_correlation(
        design.loadings, design.edges, TRIAL.bold_effect[LAST] * design.max_effect
    )
    dz = np.array([np.arctanh(r1[i, j]) - np.arctanh(r0[i, j]) for i, j in design.edges])
    pred = nbs_power(trial_noise, n_subjects=[5, 10], effects=[1.0], thresholds=[0.001],
                     threshold_type="p", edges=design.edges, effect_type="raw", edge_effects=dz,
                     n_repetitions=60, random_state=7).table.set_index("n_subjects")
    for n in (5, 10):
        direct = _direct(TRIAL, n, range(60), 0.001)
        for col, name in ((0, "detection"), (1, "recall")):
            d_mean = direct[:, col].mean()
            d_se = direct[:, col].std(ddof=1) / math.sqrt(len(direct))
            p_mean, p_se = pred.loc[n, name], pred.loc[n, f"{name}_se"]
            print(f"n = {n} {name}: predicted {p_mean:.3f} +- {p_se:.3f}, "
                  f"direct {d_mean:.3f} +- {d_se:.3f}")
            assert abs(p_mean - d_mean) <= 3 * math.hypot(p_se, d_se) + 0.02, (n, name)
    # the design has power to spare at 10 subjects and next to none at 5
    assert pred.loc[10, "detection"] >= 0.5 and pred.loc[5, "detection"] <= 0.2


def test_trial_subnetwork_found_with_enough_subjects_and_not_at_five(trial_noise):
    """The issue's target (precision >= 0.8, recall >= 0.6 of the planted edges) on the
    reduced trial simulation: met at 20 subjects (one-sided p < 1e-4 primary threshold),
    not reachable at the trial's 5 (4 degrees of freedom: see the closing note)."""
    design = bold_design(TRIAL)
    s20 = _direct(TRIAL, 20, range(10), 1e-4)
    prec, rec = np.nanmean(s20[:, 2]), s20[:, 1].mean()
    print(f"20 subjects: detection {s20[:, 0].mean():.2f}, precision {prec:.3f}, recall {rec:.3f}")
    assert s20[:, 0].mean() == 1.0 and prec >= 0.8 and rec >= 0.6
    s5 = _direct(TRIAL, 5, range(30), 0.001)
    print(f"5 subjects: detection {s5[:, 0].mean():.2f}, recall {s5[:, 1].mean():.3f}")
    assert s5[:, 1].mean() < 0.1
    assert len(design.edges) == 143 and len({i for e in design.edges for i in e}) == 113


def test_trial_null_variant_keeps_the_family_wise_error_rate():
    """trial-null (no planted change): the demo's pre-specified NBS (one-sided, t > 3) finds a
    significant component in <= 5 % of 200 synthetic 5-subject trials (within MC error)."""
    spec = PRESETS["trial-null"]
    assert set(spec.bold_effect) == {0.0} and set(spec.rd_change) == {0.0}
    scores = _direct(spec, 5, range(200), 3.0, threshold_type="t")
    fwer = scores[:, 3].mean()
    print(f"trial-null FWER over 200 seeds: {fwer:.3f}")
    assert fwer <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 200)


# ------------------------------------------------------------------ real data

REAL_BOLD = Path(__file__).resolve().parents[2] / "shared/data/real/studyforrest-bold/bold.nii.gz"


def _shared_region_slope(d: np.ndarray, corr: np.ndarray, rng: np.random.Generator) -> float:
    """Regression slope of d_ij d_ik / var(d) on corr_jk over random region triples.

    For sample correlations the noise of two edges that share region i covaries with
    the correlation of their other ends (slope about 1); independent edges give 0.
    """
    n = d.shape[0]
    i, j, k = rng.integers(n, size=(3, 200_000))
    ok = (i != j) & (i != k) & (j != k)
    i, j, k = i[ok], j[ok], k[ok]
    iu = np.triu_indices(n, 1)
    y = d[i, j] * d[i, k] / d[iu].var()
    return float(np.polyfit(corr[j, k], y, 1)[0])


@pytest.mark.skipif(not REAL_BOLD.exists(), reason=f"real BOLD run not found: {REAL_BOLD}")
def test_wishart_noise_model_matches_the_change_noise_of_a_real_run():
    """Real data (studyforrest run, 156 volumes, TR 2 s; Sengupta et al. 2016, Sci Data
    3:160093; Open Data Commons PDDL): the Fisher-z change between the run's two halves
    (391 regions of 5 x 5 x 5 voxels, detrended, 0.01-0.1 Hz) has the same variance at
    every correlation strength (one n_eff, as the Wishart model assumes), and the noise of
    edges sharing a region covaries with the correlation of their other ends as in the
    Wishart model (slope 1.10; model 0.90 +- 0.11 over 20 draws), not as independent
    edges (0)."""
    import nibabel as nib
    from nilearn.masking import compute_epi_mask
    from scipy import signal

    img = nib.load(REAL_BOLD)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = compute_epi_mask(img).get_fdata().astype(bool)
    c = 5
    ts = []
    for i in range(0, data.shape[0] - c + 1, c):
        for j in range(0, data.shape[1] - c + 1, c):
            for k in range(0, data.shape[2] - c + 1, c):
                m = mask[i : i + c, j : j + c, k : k + c]
                if m.mean() >= 0.5:
                    ts.append(data[i : i + c, j : j + c, k : k + c][m].mean(axis=0))
    ts = np.array(ts).T
    b, a = signal.butter(2, [0.01 / 0.25, 0.1 / 0.25], btype="band")

    def clean(x):
        return signal.filtfilt(b, a, signal.detrend(x, axis=0), axis=0)

    half = ts.shape[0] // 2
    z = []
    for seg in (ts[:half], ts[half : 2 * half]):
        r = np.corrcoef(clean(seg), rowvar=False)
        np.fill_diagonal(r, 0.0)
        z.append(np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7)))
    d = z[1] - z[0]
    n_reg = d.shape[0]
    iu = np.triu_indices(n_reg, 1)
    full = np.corrcoef(clean(ts), rowvar=False)
    assert n_reg > 300
    # one variance at every correlation strength below 0.8 (Fisher z stabilises it)
    var_all = d[iu].var()
    absr = np.abs(full[iu])
    for lo, hi in ((0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8)):
        sel = (absr >= lo) & (absr < hi)
        assert abs(d[iu][sel].var() / var_all - 1) < 0.1, (lo, hi)
    real = _shared_region_slope(d, full, np.random.default_rng(0))
    noise = ChangeNoise(sd=np.ones((n_reg, n_reg)), residuals=np.zeros((1, n_reg, n_reg)),
                        n_subjects=1, measure="fisher_z",
                        mean_correlation=np.tanh(z).mean(axis=0) + np.eye(n_reg),
                        n_effective=3 + 2 / var_all)
    model = _Wishart(noise, np.arange(n_reg))
    slopes = []
    for s in range(20):
        sim = np.zeros((n_reg, n_reg))
        sim[iu] = model.changes(1, np.random.default_rng(s))[0]
        slopes.append(_shared_region_slope(sim + sim.T, full, np.random.default_rng(0)))
    indep = np.zeros((n_reg, n_reg))
    indep[iu] = np.random.default_rng(1).standard_normal(iu[0].size)
    flat = _shared_region_slope(indep + indep.T, full, np.random.default_rng(0))
    print(f"n_eff {noise.n_effective:.1f}; shared-region slope: real {real:.2f}, Wishart "
          f"{np.mean(slopes):.2f} +- {np.std(slopes):.2f}, independent {flat:.3f}")
    assert real > 0.5 and abs(flat) < 0.1
    assert abs(real - np.mean(slopes)) < 3 * np.std(slopes)

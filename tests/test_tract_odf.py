"""CSA / CSD fibre orientations (pipeline.tract.odf) on simulated voxels.

Signals come from DIPY's multi-tensor simulator (an independent forward model):
a single fibre, and two fibres crossing at 90 and 60 degrees. CSD must find both
crossing directions, which the tensor's principal eigenvector cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.core.sphere import HemiSphere, disperse_charges
from dipy.sims.voxel import multi_tensor

from pipeline.tract.odf import OdfParams, fit_odf, select_single_shell

EVALS = np.array([[1.7e-3, 0.3e-3, 0.3e-3]] * 2)


def _gtab(n_dirs: int = 60, bvals=(1000.0,), n_b0: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    theta, phi = np.pi * rng.random(n_dirs), 2 * np.pi * rng.random(n_dirs)
    hemi, _ = disperse_charges(HemiSphere(theta=theta, phi=phi), 2000)
    bv = np.concatenate([np.zeros(n_b0), *[np.full(n_dirs, b) for b in bvals]])
    vecs = np.concatenate([np.zeros((n_b0, 3)), *[hemi.vertices] * len(bvals)])
    return gradient_table(bv, bvecs=vecs)


def _direction(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0.0])


def _voxels(gtab, angles, n: int, *, snr: float | None = 40, seed: int = 1):
    """n voxels with fibres at the given in-plane angles (degrees from x), Rician noise."""
    sticks = [(90.0, a) for a in angles]  # (theta, phi) in degrees
    frac = [100.0 / len(angles)] * len(angles)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sig, _ = multi_tensor(
            gtab, EVALS[: len(angles)], S0=100, angles=sticks, fractions=frac, snr=None
        )
        if snr:
            sigma = 100 / snr
            sig = np.hypot(sig + rng.normal(0, sigma, sig.shape), rng.normal(0, sigma, sig.shape))
        out.append(sig)
    return np.asarray(out)


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    return float(
        np.degrees(np.arccos(min(1.0, abs(np.dot(u, v)) / np.linalg.norm(u) / np.linalg.norm(v))))
    )


def _block(gtab, *, crossing_angle: float, seed: int = 1):
    """A 4 x 4 x 2 volume: z = 0 single fibres along x (the response), z = 1 crossings."""
    single = _voxels(gtab, [0.0], 16, seed=seed).reshape(4, 4, 1, -1)
    cross = _voxels(gtab, [0.0, crossing_angle], 16, seed=seed + 1).reshape(4, 4, 1, -1)
    data = np.concatenate([single, cross], axis=2)
    wm = np.ones(data.shape[:3], bool)
    fa = np.zeros(data.shape[:3])
    fa[..., 0] = 0.8  # response from the single-fibre voxels only
    fa[..., 1] = 0.4
    return data, wm, fa


@pytest.mark.parametrize("crossing_angle", [90.0, 60.0])
def test_csd_resolves_crossing_fibres(crossing_angle):
    gtab = _gtab()
    data, wm, fa = _block(gtab, crossing_angle=crossing_angle)
    fit = fit_odf(
        data, gtab, wm, params=OdfParams(model="csd", min_response_voxels=8), wm=wm, fa=fa
    )
    assert fit.response_voxels == 16
    evals = fit.response[0]
    assert evals[0] == pytest.approx(1.7e-3, rel=0.15) and evals[1] == pytest.approx(
        0.3e-3, rel=0.35
    )
    truth = (_direction(0.0), _direction(crossing_angle))
    errors = []
    for idx in np.ndindex(4, 4):
        dirs = fit.peaks.peak_dirs[(*idx, 1)]
        vals = fit.peaks.peak_values[(*idx, 1)]
        found = dirs[vals > 0]
        assert len(found) >= 2, (idx, vals)
        errors += [min(_angle(t, d) for d in found[:2]) for t in truth]
    print(
        f"crossing {crossing_angle:.0f} deg: median peak error {np.median(errors):.1f} deg, max {max(errors):.1f}"
    )
    assert np.median(errors) < 8.0 and max(errors) < 20.0
    # single-fibre voxels: one dominant peak along x
    for idx in np.ndindex(4, 4):
        assert _angle(fit.peaks.peak_dirs[(*idx, 0, 0)], truth[0]) < 10.0


def test_csa_finds_the_single_fibre_direction():
    gtab = _gtab()
    data = _voxels(gtab, [30.0], 8).reshape(2, 2, 2, -1)
    fit = fit_odf(data, gtab, np.ones((2, 2, 2), bool), params=OdfParams(model="csa"))
    assert fit.response is None
    errs = [_angle(fit.peaks.peak_dirs[(*i, 0)], _direction(30.0)) for i in np.ndindex(2, 2, 2)]
    assert max(errs) < 10.0, errs
    assert fit.describe()["model"] == "csa" and fit.describe()["bvalue"] == 1000.0


def test_single_shell_selection_keeps_b0_and_the_largest_shell():
    bvals = np.array([0, 5, 1000, 1000, 2000, 2000, 2000, 0, 995, 2010])
    np.testing.assert_array_equal(select_single_shell(bvals), [0, 1, 4, 5, 6, 7, 9])
    tie = np.array([0, 1000, 1000, 2000, 2000])
    np.testing.assert_array_equal(select_single_shell(tie), [0, 3, 4])  # highest b on a tie
    with pytest.raises(ValueError, match="b = 0"):
        select_single_shell(np.array([1000.0, 1000.0, 2000.0]))


def test_multi_shell_data_is_fitted_on_one_shell():
    gtab = _gtab(n_dirs=30, bvals=(1000.0, 2500.0))
    data = _voxels(gtab, [0.0], 8).reshape(2, 2, 2, -1)
    fit = fit_odf(data, gtab, np.ones((2, 2, 2), bool), params=OdfParams(model="csa"))
    assert fit.bvalue == 2500.0 and fit.n_volumes == 6 + 30


def test_too_few_directions_for_the_sh_order_is_a_clear_error():
    gtab = _gtab(n_dirs=20)
    data = _voxels(gtab, [0.0], 8, snr=None).reshape(2, 2, 2, -1)
    with pytest.raises(ValueError, match=r"sh_order 6 needs at least 28 directions.*has 20"):
        fit_odf(data, gtab, np.ones((2, 2, 2), bool), params=OdfParams(model="csa", sh_order=6))
    with pytest.raises(ValueError, match="white-matter mask and FA"):
        fit_odf(data, gtab, np.ones((2, 2, 2), bool), params=OdfParams(model="csd", sh_order=4))


def test_response_falls_back_to_the_most_anisotropic_voxels():
    gtab = _gtab()
    data, wm, fa = _block(gtab, crossing_angle=90.0)
    fa = fa * 0.5  # nothing above 0.7
    fit = fit_odf(
        data, gtab, wm, params=OdfParams(model="csd", min_response_voxels=16), wm=wm, fa=fa
    )
    assert fit.response_voxels == 16 and "highest FA" in fit.response_selection
    assert fit.response[0][0] == pytest.approx(1.7e-3, rel=0.15)  # still the single-fibre voxels


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="even"):
        OdfParams(sh_order=5)
    with pytest.raises(ValueError, match="must be one of"):
        OdfParams(model="dti")

"""Tensor fitting (pipeline.dwi.tensor): truth recovery, equality with DIPY, robustness."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dwi.tensor import METHODS, TensorMaps, design_matrix, fit_tensor, to_nifti_dict
from pipeline.gradients import fsl_to_world, world_to_fsl
from pipeline.phantom.anatomy import load_template, tract_field
from pipeline.phantom.dwi import gradient_scheme, simulate_dwi
from pipeline.phantom.trial import FOV, PRESETS, acquisition_grid, make_subject

SPEC = PRESETS["tiny"]
ARRAYS = ("fa", "md", "ad", "rd", "evals", "v1", "rgb", "s0", "residual")


def _gtab(bvals, bvecs):
    from dipy.core.gradients import gradient_table

    return gradient_table(np.asarray(bvals, float), bvecs=np.asarray(bvecs, float))


@pytest.fixture(scope="module")
def noiseless():
    """Noiseless, motion-free phantom DWI of the tiny preset (3 mm, 3 b=0 + 30 dirs)."""
    subject = make_subject(SPEC, 0)
    shape, aff = acquisition_grid(FOV["dwi"], SPEC.dwi_voxel_mm, "LAS")
    rng = np.random.default_rng(3)
    bvals, bvecs = gradient_scheme(3, 30, 1000.0, rng)
    ph = simulate_dwi(
        grid_shape=shape, grid_affine=aff,
        to_template=subject.to_template(SPEC.sessions[0], "dwi"),
        template=load_template(SPEC.template_resolution), tracts=tract_field(SPEC.template_resolution),
        lesions=subject.lesions, session_index=0, rd_change_left_nawm=0.0,
        bvals=bvals, bvecs_world=bvecs, rng=rng, noiseless=True,
    )
    gtab = _gtab(ph.bvals, world_to_fsl(ph.bvecs_world, ph.affine))
    return ph, gtab


def _assert_clean(maps: TensorMaps) -> None:
    """No NaN/Inf, zeros outside the fitted voxels, FA and colour FA in [0, 1]."""
    for name in ARRAYS:
        arr = getattr(maps, name)
        assert arr.dtype == np.float32, name
        assert np.all(np.isfinite(arr)), name
        assert not np.any(arr[~maps.mask]), name
    assert maps.fa.min() >= 0 and maps.fa.max() <= 1
    assert maps.rgb.min() >= 0 and maps.rgb.max() <= 1
    assert maps.n_voxels_fitted == int(maps.mask.sum())


def test_design_matrix_equals_dipy(noiseless):
    from dipy.reconst.dti import design_matrix as dipy_design

    _, gtab = noiseless
    np.testing.assert_array_equal(design_matrix(gtab.bvals, gtab.bvecs), dipy_design(gtab))


@pytest.mark.parametrize("method", METHODS)
def test_noiseless_fit_recovers_truth(noiseless, method):
    """On a noiseless single-tensor signal every estimator gives back the truth, and
    v1 (in the FSL frame of the b-vectors) maps to the true world direction."""
    ph, gtab = noiseless
    mask = ph.truth["brain"].copy()
    if method in ("NLLS", "RESTORE"):  # per-voxel optimisers: a slab of the brain
        mask[:, :, : mask.shape[2] // 2 - 2] = False
        mask[:, :, mask.shape[2] // 2 + 2 :] = False
    assert mask.sum() > 1500
    maps = fit_tensor(ph.data, gtab, mask, method=method, sigma=1.0)
    _assert_clean(maps)
    assert maps.n_voxels_fitted == mask.sum()
    assert maps.n_negative_eigenvalue_voxels == 0
    np.testing.assert_allclose(maps.fa[mask], ph.truth["fa"][mask], rtol=0, atol=1e-4)
    for name in ("md", "ad", "rd"):
        np.testing.assert_allclose(
            getattr(maps, name)[mask], ph.truth[name][mask], rtol=1e-4, atol=1e-9
        )
    np.testing.assert_allclose(maps.s0[mask], ph.truth["s0"][mask], rtol=1e-4)
    assert np.percentile(maps.residual[mask], 99) < 1e-4
    aniso = mask & (ph.truth["fa"] > 0.2)
    world = fsl_to_world(maps.v1[aniso], ph.affine)
    cos = np.abs(np.sum(world * ph.truth["v1"][aniso], axis=1))
    assert np.degrees(np.arccos(np.clip(cos.min(), 0, 1))) < 0.5


def _add_rician_noise(ph, snr: float, seed: int) -> tuple[np.ndarray, float]:
    rng = np.random.default_rng(seed)
    sigma = float(np.median(ph.truth["s0"][ph.truth["wm"] > 0.9])) / snr
    re = ph.data + rng.normal(0, sigma, ph.data.shape)
    return np.sqrt(re**2 + rng.normal(0, sigma, ph.data.shape) ** 2), sigma


def test_wls_and_ols_equal_dipy_on_noisy_phantom(noiseless):
    """Our vectorised WLS/OLS reproduce DIPY's TensorModel on the tiny phantom at SNR 25
    (int16 data as read from disk), in every brain voxel."""
    from dipy.reconst.dti import TensorModel

    ph, gtab = noiseless
    noisy, _ = _add_rician_noise(ph, 25.0, seed=2)
    data = np.clip(np.round(noisy), 0, 32767).astype(np.int16)
    mask = ph.truth["brain"]
    for method in ("WLS", "OLS"):
        ours = fit_tensor(data, gtab, mask, method=method)
        ref = TensorModel(gtab, fit_method=method, return_S0_hat=True).fit(data, mask=mask)
        _assert_clean(ours)
        assert ours.n_voxels_fitted == mask.sum()
        assert np.max(np.abs(ours.fa[mask] - ref.fa[mask])) < 1e-4, method
        for name in ("md", "ad", "rd"):
            np.testing.assert_allclose(
                getattr(ours, name)[mask], getattr(ref, name)[mask], rtol=1e-4, atol=1e-9
            )
        np.testing.assert_allclose(ours.s0[mask], ref.S0_hat[mask], rtol=1e-4)
        np.testing.assert_allclose(ours.evals[mask], ref.evals[mask], rtol=1e-4, atol=1e-9)
        aniso = mask & (ref.fa > 0.1)
        cos = np.abs(np.sum(ours.v1[aniso] * ref.evecs[..., 0][aniso], axis=1))
        assert np.percentile(cos, 0.1) > 0.999, method


def test_noisy_phantom_white_matter_medians_near_truth(noiseless):
    """Rician noise at SNR 25 (b=0 white matter), no motion: WM medians within a few %."""
    ph, gtab = noiseless
    t = ph.truth
    noisy, sigma = _add_rician_noise(ph, 25.0, seed=11)
    maps = fit_tensor(noisy.astype(np.float32), gtab, t["brain"])
    _assert_clean(maps)
    wm = t["brain"] & (t["wm"] > 0.9) & (t["lesion"] < 0.01)
    assert wm.sum() > 5000
    for name, tol in (("fa", 0.04), ("md", 0.02), ("ad", 0.04), ("rd", 0.04)):
        rel = np.median(getattr(maps, name)[wm]) / np.median(t[name][wm]) - 1
        assert abs(rel) < tol, (name, rel)
    # residual relative to S0 is about the inverse SNR
    ratio = np.median(maps.residual[wm]) / (sigma / np.median(maps.s0[wm]))
    assert 0.7 < ratio < 1.1, ratio


def _planted_volume():
    """4x4x3 voxels of a prolate tensor, one voxel with a negative diffusivity."""
    rng = np.random.default_rng(5)
    bvals, bvecs = gradient_scheme(2, 20, 1000.0, rng)
    d_ok = np.diag([1.5e-3, 0.5e-3, 0.4e-3])
    d_neg = np.diag([1.5e-3, 0.5e-3, -0.3e-3])  # signal rises with b along z
    adc = lambda d: np.einsum("gi,ij,gj->g", bvecs, d, bvecs)  # noqa: E731
    data = np.empty((4, 4, 3, len(bvals)), dtype=np.float32)
    data[...] = 1000.0 * np.exp(-bvals * adc(d_ok))
    data[1, 2, 1] = 1000.0 * np.exp(-bvals * adc(d_neg))
    return data, _gtab(bvals, bvecs)


@pytest.mark.parametrize("method", METHODS)
def test_negative_eigenvalues_are_clipped_and_counted(method):
    data, gtab = _planted_volume()
    maps = fit_tensor(data, gtab, method=method, sigma=10.0)
    _assert_clean(maps)
    assert maps.n_voxels_fitted == data[..., 0].size
    assert maps.n_negative_eigenvalue_voxels == 1
    assert maps.min_diffusivity == pytest.approx(1e-9, rel=0.01)  # 1e-6 / max b-matrix entry
    assert maps.evals[1, 2, 1, 2] == pytest.approx(maps.min_diffusivity)
    np.testing.assert_allclose(maps.evals[1, 2, 1, :2], [1.5e-3, 0.5e-3], rtol=1e-3)
    assert maps.fa[1, 2, 1] == pytest.approx(np.sqrt(0.7), abs=1e-3)  # evals (1.5, 0.5, 0)e-3
    np.testing.assert_allclose(maps.evals[0, 0, 0], [1.5e-3, 0.5e-3, 0.4e-3], rtol=1e-4)
    # a larger floor is honoured
    floor = 1e-5
    maps = fit_tensor(data, gtab, method=method, sigma=10.0, min_diffusivity=floor)
    assert maps.evals[1, 2, 1, 2] == pytest.approx(floor)
    assert maps.n_negative_eigenvalue_voxels == 1


@pytest.mark.parametrize("method", METHODS)
def test_bad_voxels_are_zero_never_nan(method):
    data, gtab = _planted_volume()
    data[0, 0, 0] = 0.0  # no signal at all
    data[0, 1, 0, 3] = np.nan
    data[0, 2, 0, 5] = np.inf
    data[3, 3, 2, 1:] = 0.0  # b=0 signal only: the floor gives a huge diffusivity
    mask = np.ones(data.shape[:3], bool)
    mask[2, 2, 2] = False
    maps = fit_tensor(data, gtab, mask, method=method, sigma=10.0)
    _assert_clean(maps)
    assert not maps.mask[0, 1, 0] and not maps.mask[0, 2, 0] and not maps.mask[2, 2, 2]
    assert maps.n_failed_voxels >= 2
    assert maps.n_voxels_fitted + maps.n_failed_voxels == mask.sum()
    assert maps.mask[1, 1, 1] and maps.fa[1, 1, 1] > 0.4


def test_restore_needs_sigma_and_accepts_a_map():
    data, gtab = _planted_volume()
    with pytest.raises(ValueError, match=r"RESTORE.*needs the noise standard deviation"):
        fit_tensor(data, gtab, method="RESTORE")
    with pytest.raises(ValueError, match="positive"):
        fit_tensor(data, gtab, method="RESTORE", sigma=0.0)
    with pytest.raises(ValueError, match="shape"):
        fit_tensor(data, gtab, method="RESTORE", sigma=np.ones((2, 2, 2)))
    sigma_map = np.full(data.shape[:3], 10.0)
    sigma_map[0] = 20.0
    maps = fit_tensor(data, gtab, method="restore", sigma=sigma_map)
    _assert_clean(maps)
    assert maps.method == "RESTORE"
    np.testing.assert_allclose(maps.evals[0, 0, 0], [1.5e-3, 0.5e-3, 0.4e-3], rtol=1e-4)


def test_input_errors():
    data, gtab = _planted_volume()
    with pytest.raises(ValueError, match="method must be one of"):
        fit_tensor(data, gtab, method="LM")
    with pytest.raises(ValueError, match="volumes"):
        fit_tensor(data[..., :-1], gtab)
    with pytest.raises(ValueError, match="mask shape"):
        fit_tensor(data, gtab, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="4D"):
        fit_tensor(data[0], gtab)


@pytest.mark.parametrize("method", ["WLS", "NLLS"])
def test_parallel_chunks_give_the_same_result(noiseless, method, monkeypatch):
    import pipeline.dwi.tensor as tensor

    ph, gtab = noiseless
    mask = ph.truth["brain"].copy()
    mask[:, :, :25] = False
    mask[:, :, 27:] = False
    monkeypatch.setattr(tensor, "CHUNK_VOXELS", 257)  # many chunks
    one = fit_tensor(ph.data, gtab, mask, method=method)
    two = fit_tensor(ph.data, gtab, mask, method=method, n_procs=2)
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name), err_msg=name)


def test_to_nifti_dict():
    data, gtab = _planted_volume()
    maps = fit_tensor(data, gtab)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    imgs = to_nifti_dict(maps, aff)
    assert set(imgs) == {*ARRAYS, "mask"}
    assert imgs["v1"].shape == (4, 4, 3, 3)
    np.testing.assert_array_equal(imgs["fa"].affine, aff)
    assert imgs["mask"].get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(imgs["md"].dataobj), maps.md)

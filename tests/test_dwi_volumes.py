"""Scanner-derived volumes and tensor shell selection (pipeline.dwi.volumes).

Real data: the Philips Achieva 32-direction series of ../shared/data/real/philips-dti32
(tests/realdata.py): ``dwi`` (1 b = 0 + 32 x b = 1000) and ``dwi_with-trace``, the same
series with the scanner's isotropic (trace) image kept as volume 33, written with b = 0
and a zero vector. The subject of the real series moved by 3-5 mm during the scan.

Phantom: the DWI series of the tiny preset's first session as
:func:`pipeline.phantom.trial.simulate_session` builds it for ``tiny_phantom_sessions``
(same gradient scheme, Rician noise at SNR 25, bias field, random streams), but without
the head motion: every moved volume re-samples the anatomy, which makes the series cost
~10-30 s on a shared 2-core machine against ~2.5 s without it (and ``tiny_phantom_sessions``
adds the structural and BOLD images). Motion robustness is covered by the real series.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.dwi.gradtable import DwiGradients
from pipeline.dwi.tensor import fit_tensor
from pipeline.dwi.volumes import (
    DERIVED_B0_RATIO,
    DerivedVolume,
    derived_volumes,
    drop_derived_volumes,
    tensor_volumes,
)
from tests import realdata

PHILIPS = realdata.REAL / "philips-dti32"
needs_real = pytest.mark.skipif(
    not (PHILIPS / "dwi_with-trace.nii.gz").exists() or not (PHILIPS / "dwi.nii.gz").exists(),
    reason=f"real Philips DWI not found in {PHILIPS}",
)


# ----------------------------------------------------------------- fixtures
def _load(stem: str) -> tuple[np.ndarray, DwiGradients]:
    path = PHILIPS / f"{stem}.nii.gz"
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    grads = DwiGradients.from_files(path, PHILIPS / f"{stem}.bval", PHILIPS / f"{stem}.bvec")
    return data, grads


@pytest.fixture(scope="module")
def philips():
    return _load("dwi")


@pytest.fixture(scope="module")
def philips_trace():
    return _load("dwi_with-trace")


@pytest.fixture(scope="module")
def phantom():
    """(int16 data, gradients, true brain mask) of the tiny preset's session 0 DWI (no motion)."""
    from pipeline.phantom.anatomy import grid_points, load_template, tract_field
    from pipeline.phantom.dwi import gradient_scheme, simulate_dwi
    from pipeline.phantom.trial import (
        FOV,
        ORIENTATION,
        PRESETS,
        acquisition_grid,
        bias_field,
        make_subject,
        rng_for,
    )

    spec = PRESETS["tiny"]
    subject = make_subject(spec, 0)
    rng = rng_for(spec.seed, subject.index, 0, "dwi")
    bvals, bvecs = gradient_scheme(spec.n_b0, spec.n_directions, spec.bvalue, rng)
    shape, aff = acquisition_grid(FOV["dwi"], spec.dwi_voxel_mm, ORIENTATION["dwi"])
    bias = bias_field(grid_points(shape, aff), rng, spec.bias_strength / 2)
    ph = simulate_dwi(
        grid_shape=shape, grid_affine=aff, to_template=subject.to_template(spec.sessions[0], "dwi"),
        template=load_template(spec.template_resolution), tracts=tract_field(spec.template_resolution),
        lesions=subject.lesions, session_index=0, rd_change_left_nawm=spec.rd_change[0],
        bvals=bvals, bvecs_world=bvecs, rng=rng, snr_b0=spec.snr_b0, motion=None,
        n_dropout=spec.dwi_dropout_volumes, bias_field=bias,
    )
    data = np.clip(np.round(ph.data), 0, np.iinfo(np.int16).max).astype(np.int16)
    grads = DwiGradients.from_world(ph.bvals, ph.bvecs_world, ph.affine)
    return data, grads, ph.truth["brain"] > 0.5


def _with_volume(data, grads, volume, bval, bvec):
    """The series with one more volume appended (gradient table built without validation,
    which would reject a b > 0 zero vector)."""
    out = np.concatenate([data, volume[..., None].astype(data.dtype)], axis=-1)
    g = DwiGradients(
        np.append(grads.bvals, bval), np.vstack([grads.bvecs, bvec]), grads.affine,
        grads.b0_threshold, grads.shell_tolerance,
    )
    return out, g


def _trace(data, grads):
    """Isotropic (trace-weighted) image: geometric mean of the diffusion-weighted volumes."""
    dw = data[..., grads.dw_mask].astype(np.float64)
    return np.exp(np.log(np.maximum(dw, 1.0)).mean(axis=-1))


# ----------------------------------------------------------------- real series
@needs_real
def test_real_trace_volume_is_detected(philips_trace):
    data, grads = philips_trace
    assert grads.n_volumes == 34 and grads.b0_mask[33] and not grads.bvecs[33].any()
    found = derived_volumes(data, grads)
    assert [d.index for d in found] == [33]
    reason = found[0].reason
    assert "trace" in reason and "b = 0" in reason and "zero vector" in reason
    # the measured ratio (0.39) is printed and lies inside the b = 1000 volumes' range
    assert "0.39 of the brightest b = 0 volume (volume 0" in reason
    kept = drop_derived_volumes(data, grads)
    np.testing.assert_array_equal(kept.kept, np.arange(33))
    assert kept.warnings == (found[0].warning,)
    assert kept.warnings[0].startswith("volume 33 (0-based) has b = 0 and a zero vector")
    assert kept.warnings[0].endswith("left out (as dcm2niix does)")


@needs_real
def test_real_clean_series_has_no_derived_volume(philips):
    data, grads = philips
    assert derived_volumes(data, grads) == []
    kept = drop_derived_volumes(data, grads)
    assert kept.derived == () and kept.warnings == ()
    out, g = kept.select(data, grads)
    assert out is data and g is grads


@needs_real
def test_real_trace_as_only_b0_is_detected(philips_trace):
    """Without the true b = 0, the trace "b = 0" is not brighter than the diffusion-
    weighted volumes: no true b = 0 in the series (rule 4)."""
    data, grads = philips_trace
    sel = np.arange(1, 34)
    found = derived_volumes(data[..., sel], grads.select(sel))
    assert [d.index for d in found] == [32]
    assert "no true b = 0 volume" in found[0].reason and "trace" in found[0].reason


@needs_real
def test_real_fit_after_dropping_equals_clean_fit(philips, philips_trace):
    from dipy.segment.threshold import otsu

    clean, g_clean = philips
    data, grads = philips_trace
    assert np.array_equal(data[..., :33], clean)  # the same acquisitions
    b0 = clean[..., 0]
    mask = b0 > otsu(b0)
    kept = drop_derived_volumes(data, grads)
    d_kept, g_kept = kept.select(data, grads)
    dropped = fit_tensor(d_kept, g_kept.dipy_gtab(), mask, n_procs=2)
    ref = fit_tensor(clean, g_clean.dipy_gtab(), mask, n_procs=2)
    assert dropped.n_voxels_fitted == ref.n_voxels_fitted > 100_000
    assert np.abs(dropped.fa - ref.fa).max() <= 1e-6
    assert np.abs(dropped.md - ref.md).max() <= 1e-12

    # keeping the trace image as a second "b = 0" pulls the fitted S0 down: diffusivities
    # shrink and white-matter FA rises. Measured (WM = clean FA > 0.4, 56.6 k voxels):
    # median FA 0.52 -> 0.76 (x 1.47), 99.9 % of the voxels higher, median MD x 0.53
    kept_all = fit_tensor(data, grads.dipy_gtab(), mask, n_procs=2)
    wm = mask & (ref.fa > 0.4)
    assert wm.sum() > 20_000
    fa_ratio = np.median(kept_all.fa[wm]) / np.median(ref.fa[wm])
    assert fa_ratio > 1.3, fa_ratio
    assert np.mean(kept_all.fa[wm] > ref.fa[wm]) > 0.99
    assert np.median(kept_all.md[wm]) / np.median(ref.md[wm]) < 0.6


# ----------------------------------------------------------------- phantom
def test_phantom_series_has_no_derived_volume(phantom):
    data, grads, brain = phantom
    assert grads.b0_mask.sum() == 3
    assert derived_volumes(data, grads) == []  # automatic head mask
    assert derived_volumes(data, grads, mask=brain) == []  # true brain mask


def test_phantom_trace_with_b_and_zero_vector_is_detected(phantom):
    data, grads, _ = phantom
    out, g = _with_volume(data, grads, _trace(data, grads), 1000.0, [0.0, 0.0, 0.0])
    found = derived_volumes(out, g)
    assert [d.index for d in found] == [data.shape[-1]]
    assert "b = 1000 but a zero gradient vector" in found[0].reason
    assert "trace" in found[0].reason
    # evidence: its brain signal relative to the brightest b = 0 (measured 0.40)
    assert "(brain signal 0.40 of the brightest b = 0)" in found[0].reason


def test_phantom_non_unit_vector_is_detected(phantom):
    data, grads, _ = phantom
    out, g = _with_volume(data, grads, data[..., 1], 1000.0, [0.3, 0.0, 0.0])
    found = derived_volumes(out, g)
    assert [d.index for d in found] == [data.shape[-1]]
    assert "norm 0.3" in found[0].reason


def test_phantom_trace_stored_as_b0_is_detected(phantom):
    data, grads, _ = phantom
    out, g = _with_volume(data, grads, _trace(data, grads), 0.0, [0.0, 0.0, 0.0])
    found = derived_volumes(out, g)
    assert [d.index for d in found] == [data.shape[-1]]
    assert "is 0.40 of the brightest b = 0 volume" in found[0].reason


@pytest.mark.parametrize(("scale", "flagged"), [(0.95, False), (0.75, False), (0.65, True)])
def test_phantom_b0_ratio_threshold(phantom, scale, flagged):
    """A true b = 0 drifting by a few per cent (or even 25 %) stays; below 0.7 it goes."""
    data, grads, _ = phantom
    b0 = np.flatnonzero(grads.b0_mask)
    out = data.astype(np.float32)  # copy
    out[..., b0[1]] *= scale
    found = derived_volumes(out, grads)
    assert [d.index for d in found] == ([int(b0[1])] if flagged else [])
    assert DERIVED_B0_RATIO == 0.7


def test_derived_volumes_checks_inputs(phantom):
    data, grads, _ = phantom
    with pytest.raises(ValueError, match="4D series with 33 volumes"):
        derived_volumes(data[..., :32], grads)
    with pytest.raises(ValueError, match="ratio"):
        derived_volumes(data, grads, ratio=1.5)
    with pytest.raises(ValueError, match="no voxels"):
        derived_volumes(data, grads, mask=np.zeros(data.shape[:3], bool))


def test_derived_volume_warning_text():
    d = DerivedVolume(5, "has b = 0 and a zero vector but ...: a scanner-derived trace image")
    assert d.warning == (
        "volume 5 (0-based) has b = 0 and a zero vector but ...: a scanner-derived trace "
        "image, left out (as dcm2niix does)"
    )


# ----------------------------------------------------------------- tensor shells
def _multishell(shells=(1000.0, 2000.0, 3000.0), n_dirs=30, n_b0=3, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    bvals = [np.zeros(n_b0)]
    bvecs = [np.zeros((n_b0, 3))]
    for b in shells:
        v = rng.standard_normal((n_dirs, 3))
        bvecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        bvals.append(b + jitter * rng.uniform(-1, 1, n_dirs))
    return DwiGradients(np.concatenate(bvals), np.vstack(bvecs), np.eye(4))


def test_tensor_volumes_default_bmax_leaves_high_shells_out():
    g = _multishell()
    sel = tensor_volumes(g)
    np.testing.assert_array_equal(sel.indices, np.arange(33))  # 3 b = 0 + the b = 1000 shell
    assert sel.shells == (0.0, 1000.0)
    assert sel.dropped_shells == (2000.0, 3000.0)
    assert sel.n_dropped == 60 and sel.bmax == 1500.0
    assert sel.warning == (
        "tensor fitted on b <= 1500 s/mm^2 (b = 0, 1000); shells b = 2000, 3000 (60 volumes) "
        "left out: the tensor model is not valid at high b (set dwi.tensor_bmax: null to use "
        "all shells)"
    )
    desc = sel.describe()
    assert json.loads(json.dumps(desc)) == desc
    assert desc["tensor_volumes"] == 33 and desc["tensor_shells_left_out"] == [2000.0, 3000.0]


def test_tensor_volumes_all_shells_and_single_shell():
    g = _multishell()
    sel = tensor_volumes(g, bmax=None)
    np.testing.assert_array_equal(sel.indices, np.arange(93))
    assert sel.warning is None and sel.dropped_shells == () and sel.n_dropped == 0
    sel = tensor_volumes(g, bmax=2500)
    assert sel.shells == (0.0, 1000.0, 2000.0) and sel.indices.size == 63
    assert "shell b = 3000 (30 volumes) left out" in sel.warning
    single = tensor_volumes(_multishell(shells=(1000.0,)))
    assert single.warning is None and single.indices.size == 33


def test_tensor_volumes_real_like_bvalues_and_slack():
    """Philips-like b-values (999.99996 ...) and a shell a little above bmax count as <= bmax."""
    g = _multishell(shells=(1000.0, 1505.0, 1700.0), jitter=4e-5)
    sel = tensor_volumes(g)
    assert [round(b) for b in sel.shells] == [0, 1000, 1505]
    assert [round(b) for b in sel.dropped_shells] == [1700]
    assert "b = 0, 1000, 1505" in sel.warning


def test_tensor_volumes_explicit_shells():
    g = _multishell()
    sel = tensor_volumes(g, shells=[2000, 1000])  # bmax (default 1500) does not apply
    np.testing.assert_array_equal(sel.indices, np.arange(63))
    assert sel.shells == (0.0, 1000.0, 2000.0) and sel.dropped_shells == (3000.0,)
    assert sel.requested_shells == (2000.0, 1000.0) and sel.bmax is None
    assert sel.warning is None  # the user's choice
    assert sel.describe()["tensor_shells_requested"] == [2000.0, 1000.0]
    # within the shell tolerance, b = 0 in the list is ignored
    assert np.array_equal(tensor_volumes(g, shells=[0, 3050]).indices,
                          np.r_[0:3, 63:93])


def test_tensor_volumes_errors():
    g = _multishell()
    with pytest.raises(ValueError, match=r"shell b = 1500 s/mm\^2 is not in the series .*"
                                         r"b = 0, 1000, 2000, 3000"):
        tensor_volumes(g, shells=[1000, 1500])
    with pytest.raises(ValueError, match="names no diffusion-weighted shell"):
        tensor_volumes(g, shells=[0])
    with pytest.raises(ValueError, match=r"no diffusion-weighted shell at b <= 500"):
        tensor_volumes(g, bmax=500)
    with pytest.raises(ValueError, match="needs a b = 0 volume"):
        tensor_volumes(_multishell(n_b0=0))
    with pytest.raises(ValueError, match=r"at least 6 distinct gradient directions.* have 5"):
        tensor_volumes(_multishell(shells=(1000.0, 2000.0), n_dirs=5), bmax=1500)
    # 6 volumes but only 3 distinct (antipodal) directions
    g3 = DwiGradients(np.r_[0, [1000.0] * 6], np.vstack([np.zeros(3), np.eye(3), -np.eye(3)]),
                      np.eye(4))
    with pytest.raises(ValueError, match="have 3"):
        tensor_volumes(g3)

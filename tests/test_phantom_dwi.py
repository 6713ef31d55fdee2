"""Ground truth of the diffusion phantom: conventions, tensors and the planted effect."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.gradients import fsl_to_world, world_to_fsl
from pipeline.phantom.anatomy import load_template, tract_field
from pipeline.phantom.dwi import COMPARTMENTS, gradient_scheme, simulate_dwi, tensor_metrics
from pipeline.phantom.trial import FOV, PRESETS, acquisition_grid, make_subject

SPEC = PRESETS["tiny"]


@pytest.fixture(scope="module")
def subject():
    return make_subject(SPEC, 0)


def _simulate(
    subject,
    *,
    orientation="LAS",
    session_index=0,
    rd_change=0.0,
    motion=None,
    noiseless=True,
    seed=0,
    snr=25.0,
):
    shape, aff = acquisition_grid(FOV["dwi"], SPEC.dwi_voxel_mm, orientation)
    rng = np.random.default_rng(seed)
    bvals, bvecs = gradient_scheme(3, 30, 1000.0, rng)
    return simulate_dwi(
        grid_shape=shape, grid_affine=aff,
        to_template=subject.to_template(SPEC.sessions[session_index], "dwi"),
        template=load_template(SPEC.template_resolution), tracts=tract_field(SPEC.template_resolution),
        lesions=subject.lesions, session_index=session_index, rd_change_left_nawm=rd_change,
        bvals=bvals, bvecs_world=bvecs, rng=rng, motion=motion, noiseless=noiseless, snr_b0=snr,
    )


def test_compartment_values_are_realistic():
    fa = {k: float(tensor_metrics(np.array(v["ad"]), np.array(v["rd"]))["fa"])
          for k, v in COMPARTMENTS.items()}
    assert 0.65 <= fa["wm_tract"] <= 0.75
    assert 0.45 <= fa["wm"] <= 0.65
    assert 0.1 <= fa["gm"] <= 0.2
    assert fa["csf"] == pytest.approx(0.0)
    assert COMPARTMENTS["csf"]["ad"] == pytest.approx(3e-3)
    assert fa["lesion"] < fa["wm"]
    md = {k: (v["ad"] + 2 * v["rd"]) / 3 for k, v in COMPARTMENTS.items()}
    assert md["lesion"] > 1.3 * md["wm"]


@pytest.mark.parametrize("orientation", ["LAS", "RAS"])
def test_noiseless_tensor_fit_recovers_truth_in_world_frame(subject, orientation):
    """DIPY's TensorModel on the noiseless signal, with the b-vectors written the BIDS
    (FSL) way for this image's affine, must give back the truth: this proves the
    b-vector / affine convention of the phantom and of pipeline.gradients."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    ph = _simulate(subject, orientation=orientation)
    bvec_file = world_to_fsl(ph.bvecs_world, ph.affine)
    gtab = gradient_table(ph.bvals, bvecs=bvec_file)
    mask = ph.truth["brain"]
    fit = TensorModel(gtab, fit_method="WLS").fit(ph.data, mask=mask)
    for name in ("fa", "md", "ad", "rd"):
        est, true = getattr(fit, name)[mask], ph.truth[name][mask]
        sel = true > (0.05 if name == "fa" else 1e-5)
        rel = np.abs(est[sel] - true[sel]) / true[sel]
        assert np.percentile(rel, 99) < 0.01, name
    world = fsl_to_world(fit.evecs[..., 0][mask], ph.affine)
    truth_dir = ph.truth["v1"][mask]
    aniso = ph.truth["fa"][mask] > 0.2
    angle = np.degrees(np.arccos(np.clip(np.abs(np.sum(world * truth_dir, axis=1)), 0, 1)))
    assert aniso.sum() > 500
    assert np.percentile(angle[aniso], 99) < 5.0


def test_tract_orientations_follow_anatomy(subject):
    """CST runs inferior-superior, the CC body left-right, the OR anterior-posterior."""
    ph = _simulate(subject)
    v1 = np.abs(ph.truth["v1"])
    for name, axis in (("CST_L", 2), ("CST_R", 2), ("OR_L", 1), ("OR_R", 1), ("CC", 0)):
        mask = ph.truth[f"tract_{name}"]
        assert mask.sum() > 20, name
        dominant = np.argmax(v1[mask], axis=1)
        assert np.mean(dominant == axis) > 0.6, name
    left = ph.truth["left"]
    assert ph.truth["tract_CST_L"][left].sum() > 0.95 * ph.truth["tract_CST_L"].sum()
    assert ph.truth["tract_OR_R"][~left].sum() > 0.95 * ph.truth["tract_OR_R"].sum()


def test_planted_rd_change_only_in_left_nawm(subject):
    base = _simulate(subject, session_index=0, rd_change=0.0)
    late = _simulate(subject, session_index=0, rd_change=-0.06)
    t0, t1 = base.truth, late.truth
    pure_wm = (t0["wm"] > 0.999) & (t0["lesion"] < 1e-6)
    left, right = pure_wm & t0["left"], pure_wm & ~t0["left"]
    assert left.sum() > 50 and right.sum() > 50
    np.testing.assert_allclose(t1["rd"][left] / t0["rd"][left], 0.94, rtol=1e-3)
    np.testing.assert_allclose(t1["rd"][right], t0["rd"][right], rtol=1e-6)
    np.testing.assert_allclose(t1["ad"][t0["brain"]], t0["ad"][t0["brain"]], rtol=1e-6)
    lesion_core = t0["lesion"] > 0.98
    assert lesion_core.sum() > 0
    np.testing.assert_allclose(t1["rd"][lesion_core], t0["rd"][lesion_core], rtol=1e-3)


def test_head_motion_rotates_tissue_not_gradients(subject):
    """With motion, the b-vectors stay in the scanner frame: fitting the moved
    volumes without rotating them must give a worse principal direction than
    the motion-free data (the effect a pipeline must correct)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    n = 33
    motion = np.zeros((n, 6))
    motion[1:, 3] = np.deg2rad(np.linspace(0, 6, n - 1))  # slow roll up to 6 degrees
    still = _simulate(subject)
    moved = _simulate(subject, motion=motion, noiseless=False, snr=1e6)  # motion, ~no noise
    gtab = gradient_table(still.bvals, bvecs=world_to_fsl(still.bvecs_world, still.affine))
    tract = still.truth["tract_CC"] | still.truth["tract_CST_L"] | still.truth["tract_CST_R"]
    errs = []
    for ph in (still, moved):
        fit = TensorModel(gtab).fit(ph.data, mask=tract)
        world = fsl_to_world(fit.evecs[..., 0][tract], ph.affine)
        cos = np.abs(np.sum(world * still.truth["v1"][tract], axis=1))
        errs.append(np.median(np.degrees(np.arccos(np.clip(cos, 0, 1)))))
    assert errs[1] > errs[0] + 1.0

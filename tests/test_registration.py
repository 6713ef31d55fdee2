"""Registration and transforms, checked against the synthetic trial's exact mappings.

The phantom images (tiny preset, subject 0, baseline) are built with
``simulate_structural`` exactly as ``simulate_session`` builds them, without the
DWI and BOLD parts. Ground truth: ``subject.to_template(ses, seq)`` maps scanner mm
of an acquisition to MNI mm and ``subject.from_template`` back.

The three registrations (T1w brain -> MNI affine + SyN, FLAIR -> T1w rigid, and a
masked low-resolution rigid) run once per module; everything else is analytic.
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.phantom.trial import (
    PRESETS,
    make_subject,
    simulate_acquisition,
)
from pipeline.registration import (
    MNI_SPACE,
    Transform,
    Warp,
    load_mni_template_brain,
    register_rigid,
    register_to_template,
    warp_path,
)

SESSION_INDEX = 0


def _structural(spec, subject, contrast):
    data, tissues, aff = simulate_acquisition(spec, subject, SESSION_INDEX, contrast)
    brain = tissues["brain"] >= 0.5
    hemi = np.where(brain, 2 - tissues["hemisphere_left"], 0).astype(np.uint8)
    return {
        "img": nib.Nifti1Image(data, aff),
        "brain": nib.Nifti1Image(data * brain, aff),
        "mask": nib.Nifti1Image(brain.astype(np.uint8), aff),
        "hemi": nib.Nifti1Image(hemi, aff),  # 1 = left, 2 = right, 0 = outside
    }


@pytest.fixture(scope="module")
def phantom():
    spec = PRESETS["tiny"]
    subject = make_subject(spec, 0)
    return {
        "subject": subject,
        "ses": spec.sessions[SESSION_INDEX],
        "T1w": _structural(spec, subject, "T1w"),
        "FLAIR": _structural(spec, subject, "FLAIR"),
    }


@pytest.fixture(scope="module")
def template():
    return load_mni_template_brain(2)


@pytest.fixture(scope="module")
def mni_points(template):
    """200 MNI points inside the template brain mask (fixed seed)."""
    ijk = np.argwhere(np.asarray(template.dataobj) > 0)
    rng = np.random.default_rng(0)
    return nib.affines.apply_affine(template.affine, ijk[rng.choice(len(ijk), 200, replace=False)])


@pytest.fixture(scope="module")
def t1_points(phantom):
    """200 T1w scanner points inside the true brain mask (fixed seed)."""
    mask = phantom["T1w"]["mask"]
    ijk = np.argwhere(np.asarray(mask.dataobj) > 0)
    rng = np.random.default_rng(1)
    return nib.affines.apply_affine(mask.affine, ijk[rng.choice(len(ijk), 200, replace=False)])


@pytest.fixture(scope="module")
def to_mni(phantom, template):
    return register_to_template(phantom["T1w"]["brain"], template)


@pytest.fixture(scope="module")
def flair_to_t1(phantom):
    # 3 mm working grid (default 2 mm): ~4x cheaper, still far below 1 mm error
    return register_rigid(
        phantom["T1w"]["img"],
        phantom["FLAIR"]["img"],
        resolution_mm=3.0,
        source="FLAIR",
        target="T1w",
    )


def _affine_part(t: Transform) -> Transform:
    """The affine pre-alignment of a registration result (its ``affine``, no warp)."""
    return Transform(t.source, t.target, t.affine)


def _mean_dist(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=1).mean())


# --------------------------------------------------------------------------- science


def test_t1w_to_mni_landmarks(phantom, to_mni, mni_points):
    subject, ses = phantom["subject"], phantom["ses"]
    truth = subject.from_template(ses, "T1w")(mni_points)
    err_syn = _mean_dist(to_mni.target_to_source(mni_points), truth)
    err_aff = _mean_dist(_affine_part(to_mni).target_to_source(mni_points), truth)
    err_none = _mean_dist(mni_points, truth)
    print(
        f"\nT1w->MNI landmark error (mm): none {err_none:.2f}, affine {err_aff:.2f}, "
        f"affine+SyN {err_syn:.2f}"
    )
    assert (to_mni.source, to_mni.target) == ("T1w", MNI_SPACE)
    assert not to_mni.is_linear
    assert err_syn < 2.0
    assert err_aff > err_syn
    # the other direction (subject points -> MNI) through the backward field
    err_back = _mean_dist(to_mni.source_to_target(truth), mni_points)
    print(f"T1w->MNI inverse-direction error (mm): {err_back:.2f}")
    assert err_back < 2.0


def test_syn_resampled_t1_matches_template_better(phantom, to_mni, template):
    tpl = np.asarray(template.dataobj)
    inside = tpl > 0
    corr = {}
    for name, t in (("affine", _affine_part(to_mni)), ("syn", to_mni)):
        warped = np.asarray(t.resample(phantom["T1w"]["brain"], template).dataobj)
        assert warped.shape == tpl.shape
        corr[name] = np.corrcoef(warped[inside], tpl[inside])[0, 1]
    assert corr["syn"] > corr["affine"] > 0.5


def test_flair_to_t1w_rigid(phantom, flair_to_t1, t1_points):
    subject, ses = phantom["subject"], phantom["ses"]
    # T1w scanner mm -> FLAIR scanner mm (the pull-back of FLAIR -> T1w)
    truth = subject.from_template(ses, "FLAIR")(subject.to_template(ses, "T1w")(t1_points))
    err = _mean_dist(flair_to_t1.target_to_source(t1_points), truth)
    err_none = _mean_dist(t1_points, truth)
    print(f"\nFLAIR->T1w landmark error (mm): none {err_none:.2f}, rigid {err:.2f}")
    assert err < 1.0
    assert _mean_dist(flair_to_t1.source_to_target(truth), t1_points) < 1.0
    rot = flair_to_t1.affine[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
    assert flair_to_t1.is_linear


def test_rigid_with_masks_low_resolution(phantom, t1_points):
    subject, ses = phantom["subject"], phantom["ses"]
    t = register_rigid(
        phantom["T1w"]["img"],
        phantom["FLAIR"]["img"],
        static_mask=phantom["T1w"]["mask"],
        moving_mask=phantom["FLAIR"]["mask"],
        resolution_mm=4.0,
        level_iters=(100, 10),
        source="FLAIR",
        target="T1w",
    )
    truth = subject.from_template(ses, "FLAIR")(subject.to_template(ses, "T1w")(t1_points))
    assert _mean_dist(t.target_to_source(t1_points), truth) < 1.0
    with pytest.raises(ValueError, match="dense"):
        register_rigid(
            phantom["T1w"]["img"],
            phantom["FLAIR"]["img"],
            static_mask=phantom["T1w"]["mask"],
            sampling=0.25,
        )


def test_compose_and_inverse_against_truth(phantom, to_mni, flair_to_t1, mni_points):
    subject, ses = phantom["subject"], phantom["ses"]
    flair_to_mni = flair_to_t1.compose(to_mni)
    assert (flair_to_mni.source, flair_to_mni.target) == ("FLAIR", MNI_SPACE)
    truth_flair = subject.from_template(ses, "FLAIR")(mni_points)
    assert _mean_dist(flair_to_mni.target_to_source(mni_points), truth_flair) < 2.0
    # composition is exactly the chain of the parts
    chained = flair_to_t1.target_to_source(to_mni.target_to_source(mni_points))
    np.testing.assert_allclose(flair_to_mni.target_to_source(mni_points), chained, atol=1e-6)
    # MNI -> T1w -> FLAIR (inverse transforms, non-trivial pre_affine)
    mni_to_flair = to_mni.inverse().compose(flair_to_t1.inverse())
    assert (mni_to_flair.source, mni_to_flair.target) == (MNI_SPACE, "FLAIR")
    np.testing.assert_allclose(
        mni_to_flair.source_to_target(mni_points),
        flair_to_mni.target_to_source(mni_points),
        atol=1e-6,
    )
    assert _mean_dist(mni_to_flair.target_to_source(truth_flair), mni_points) < 2.0
    with pytest.raises(ValueError, match="cannot compose"):
        to_mni.compose(flair_to_t1)


def test_inverse_consistency(to_mni, mni_points):
    inv = to_mni.inverse()
    assert (inv.source, inv.target) == (MNI_SPACE, "T1w")
    subj = to_mni.target_to_source(mni_points)
    np.testing.assert_allclose(inv.source_to_target(mni_points), subj, atol=1e-9)
    np.testing.assert_allclose(inv.inverse().target_to_source(mni_points), subj, atol=1e-9)
    # forward and backward fields invert each other (DIPY's inversion error is small)
    assert np.abs(to_mni.source_to_target(subj) - mni_points).max() < 0.25
    # two non-linear transforms: T1w -> MNI -> T1w is close to the identity
    loop = to_mni.compose(inv)
    assert (loop.source, loop.target) == ("T1w", "T1w")
    assert np.abs(loop.target_to_source(subj) - subj).max() < 0.3


def test_save_load_round_trip(tmp_path, to_mni, flair_to_t1, mni_points):
    cases = {
        "nonlinear": to_mni,
        "inverse": to_mni.inverse(),
        "linear": flair_to_t1,
    }
    for name, t in cases.items():
        path = tmp_path / f"sub-01_from-{t.source}_to-{t.target}_{name}_xfm.json"
        written = t.save(path)
        assert written == t.files(path)
        assert sorted(p.name for p in tmp_path.glob(f"*_{name}_*")) == sorted(
            p.name for p in written
        )
        assert written[0] == path
        if t.is_linear:
            assert len(written) == 1
        else:
            assert written[1] == warp_path(path)
            assert written[1].name.endswith(f"_{name}_warp.nii.gz")
            assert nib.load(written[1]).shape == (*t.warp.shape, 6)
        doc = json.loads(path.read_text())
        assert (doc["source"], doc["target"]) == (t.source, t.target)
        back = Transform.load(path)
        assert (back.source, back.target, back.is_linear) == (t.source, t.target, t.is_linear)
        for fn in ("target_to_source", "source_to_target"):
            np.testing.assert_allclose(
                getattr(back, fn)(mni_points), getattr(t, fn)(mni_points), rtol=0, atol=1e-4
            )


def test_resample_labels_and_4d(phantom, to_mni, template):
    hemi = phantom["T1w"]["hemi"]
    lab = to_mni.resample(hemi, template, order=0)
    data = np.asarray(lab.dataobj)
    assert lab.get_data_dtype() == np.uint8
    assert set(np.unique(data)) <= {0, 1, 2}
    np.testing.assert_allclose(lab.affine, template.affine)
    # labels land on the correct side of the MNI midline
    x = nib.affines.apply_affine(template.affine, np.argwhere(data > 0))[:, 0]
    side = data[data > 0]
    far = np.abs(x) > 4
    agree = np.mean((side[far] == 1) == (x[far] < 0))
    assert agree > 0.99
    # brain mask overlap after the warp
    mask = np.asarray(to_mni.resample(phantom["T1w"]["mask"], template, order=0).dataobj) > 0
    tpl = np.asarray(template.dataobj) > 0
    dice = 2 * np.sum(mask & tpl) / (mask.sum() + tpl.sum())
    assert dice > 0.95
    # 4-D: volume by volume, same as 3-D
    vol = phantom["T1w"]["brain"]
    stack = nib.Nifti1Image(np.stack([vol.get_fdata(), 2 * vol.get_fdata()], -1), vol.affine)
    stack.header.set_zooms((*stack.header.get_zooms()[:3], 2.5))
    out4 = to_mni.resample(stack, (template.shape, template.affine))
    out3 = np.asarray(to_mni.resample(vol, template).dataobj)
    assert out4.shape == (*template.shape, 2)
    np.testing.assert_allclose(np.asarray(out4.dataobj)[..., 0], out3, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(out4.dataobj)[..., 1], 2 * out3, rtol=1e-5, atol=1e-3)
    assert out4.header.get_zooms()[3] == pytest.approx(2.5)


# --------------------------------------------------------------------------- analytic


def _shift(source: str, target: str, d) -> Transform:
    aff = np.eye(4)
    aff[:3, 3] = d
    return Transform(source, target, aff)


def _constant_warp(d, shape=(6, 7, 8), vox=4.0) -> Warp:
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = -12.0
    fwd = np.broadcast_to(np.asarray(d, np.float32), (*shape, 3))
    return Warp(aff, fwd, -fwd)


def test_linear_resample_exact_shift():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 5, (10, 11, 12)).astype(np.int16)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    img = nib.Nifti1Image(data, aff)
    # target point x is source point x + (2, 0, 4) mm, i.e. one voxel along i, two along k
    t = _shift("src", "tgt", (2.0, 0.0, 4.0))
    for order in (0, 1, 3):
        out = np.asarray(t.resample(img, img, order=order).dataobj)
        np.testing.assert_allclose(out[:-1, :, :-2], data[1:, :, 2:], atol=1e-3)
        assert np.all(out[-1] == 0)
    assert t.resample(img, img, order=0).get_data_dtype() == np.int16
    p = rng.normal(size=(5, 3))
    np.testing.assert_allclose(t.source_to_target(t.target_to_source(p)), p)
    with pytest.raises(ValueError, match="order"):
        t.resample(img, img, order=7)


def test_warp_composition_and_inverse_analytic():
    pts = np.random.default_rng(0).uniform(-10, 10, (20, 3))
    a = Transform("A", "B", np.eye(4), _constant_warp((1.0, 0.0, 0.0)))
    b = Transform("B", "C", np.eye(4), _constant_warp((0.0, 2.0, 0.0)), pre_affine=np.eye(4))
    rot = np.array([[0.0, -1, 0, 5], [1, 0, 0, 0], [0, 0, 1, -3], [0, 0, 0, 1]])
    c = _shift("C", "D", (0, 0, 1)).compose(Transform("D", "E", rot))
    ac = a.compose(b).compose(c)
    assert (ac.source, ac.target) == ("A", "E")
    expect = c.target_to_source(pts)
    expect = b.target_to_source(expect)
    expect = a.target_to_source(expect)
    np.testing.assert_allclose(ac.target_to_source(pts), expect, atol=1e-5)
    np.testing.assert_allclose(ac.source_to_target(expect), pts, atol=1e-5)
    np.testing.assert_allclose(ac.inverse().target_to_source(expect), pts, atol=1e-5)
    # a transform composed with its inverse is the identity
    loop = ac.compose(ac.inverse())
    np.testing.assert_allclose(loop.target_to_source(pts), pts, atol=1e-5)


def test_save_load_errors(tmp_path):
    t = Transform("A", "B", np.eye(4), _constant_warp((1.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match=r"\.json"):
        t.save(tmp_path / "x.nii.gz")
    assert warp_path(tmp_path / "a_xfm.json").name == "a_warp.nii.gz"
    assert warp_path(tmp_path / "a.json").name == "a_warp.nii.gz"
    path = tmp_path / "t_xfm.json"
    t.save(path)
    warp_path(path).unlink()
    with pytest.raises(InputError, match="missing"):
        Transform.load(path)
    (tmp_path / "bad_xfm.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match=r"bad_xfm\.json"):
        Transform.load(tmp_path / "bad_xfm.json")
    with pytest.raises(ValueError, match="4x4"):
        Transform("A", "B", np.eye(3))


def test_import_is_cheap():
    code = (
        "import sys, pipeline.registration; "
        "bad = [m for m in ('dipy', 'nilearn') if m in sys.modules]; "
        "sys.exit(f'heavy imports: {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

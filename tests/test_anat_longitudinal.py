"""Within-subject anatomical reference (anat.anatomical_reference first | unbiased)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from pipeline.anat.brain import extract_brain
from pipeline.anat.reference import build_subject_reference, mean_rigid, to_reference
from pipeline.phantom.trial import PRESETS, make_subject
from pipeline.registration import Transform

SPEC = PRESETS["tiny"]


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def _rigid(rotvec_deg, shift) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    m[:3, 3] = shift
    return m


def test_mean_rigid_of_rotations_about_one_axis_averages_angles_and_shifts():
    mats = [_rigid([0, 0, a], [t, 0, 2 * t]) for a, t in ((-3, 1), (1, 2), (5, 6))]
    mean = mean_rigid(mats)
    # about one axis the chordal mean is the mean angle (1 degree) to well below 1e-3 deg
    angle = np.degrees(Rotation.from_matrix(mean[:3, :3]).as_rotvec())
    np.testing.assert_allclose(angle, [0, 0, 1.0], atol=1e-3)
    np.testing.assert_allclose(mean[:3, 3], [3.0, 0.0, 6.0])
    with pytest.raises(ValueError, match="4, 4"):
        mean_rigid(np.zeros((2, 3, 3)))


@pytest.fixture(scope="module")
def sessions(tiny_phantom_sessions):
    t1s, masks = {}, {}
    for ph in tiny_phantom_sessions:
        img = ph.images["T1w"]
        t1s[ph.session] = img
        masks[ph.session] = nib.Nifti1Image(extract_brain(img).mask.astype(np.uint8), img.affine)
    return t1s, masks


def _true_error_mm(ref, subject) -> np.ndarray:
    """Distances between our and the true mapping reference -> m06, via baseline."""
    base, follow = SPEC.sessions
    rng = np.random.default_rng(3)
    pts = nib.affines.apply_affine(ref.image.affine, rng.uniform(15, 40, (300, 3)))
    in_base = ref.transforms[base].target_to_source(pts)
    ours = ref.transforms[follow].target_to_source(pts)
    truth = subject.from_template(follow, "T1w")(subject.to_template(base, "T1w")(in_base))
    return np.linalg.norm(ours - truth, axis=1)


@pytest.mark.parametrize("mode", ["first", "unbiased"])
def test_reference_recovers_the_true_head_movement_between_sessions(sessions, mode):
    t1s, masks = sessions
    ref = build_subject_reference(t1s, masks, mode=mode, iterations=1)
    err = _true_error_mm(ref, make_subject(SPEC, 0))
    # measured: first 0.14 mm, unbiased 0.20 mm median on 2 mm voxels
    assert np.median(err) < 0.5 and err.max() < 1.0, (np.median(err), err.max())
    moved = ref.displacement_mm()
    base, follow = SPEC.sessions
    if mode == "first":
        assert moved[base] == 0.0 and moved[follow] > 2.0  # the phantom's head moved
        np.testing.assert_array_equal(ref.image.get_fdata(), t1s[base].get_fdata())
    else:
        # mid-space: no session privileged, both move about half the way
        assert abs(moved[base] - moved[follow]) < 0.25 * max(moved.values())
        mean = mean_rigid([x.affine for x in ref.transforms.values()])
        np.testing.assert_allclose(mean, np.eye(4), atol=1e-3)  # mm and radians
        assert ref.iterations == 1


def test_to_reference_does_not_interpolate_the_reference_session(sessions):
    t1s, _ = sessions
    img = t1s["baseline"]
    same = to_reference(img, Transform.identity("T1w", "subject"), img)
    np.testing.assert_array_equal(same.get_fdata(), np.asarray(img.dataobj, dtype=np.float32))
    shifted = to_reference(img, Transform("T1w", "subject", _rigid([0, 0, 0], [2.0, 0, 0])), img)
    assert shifted.get_fdata().min() >= 0  # cubic overshoot clipped


def test_reference_rejects_bad_arguments(sessions):
    t1s, masks = sessions
    with pytest.raises(ValueError, match="mode"):
        build_subject_reference(t1s, masks, mode="sessionwise")
    with pytest.raises(ValueError, match="differ"):
        build_subject_reference(t1s, {"baseline": masks["baseline"]}, mode="first")


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """sub-02 (lesion masks drawn on the T1w grid), both sessions, anatomical_reference first."""
    from workflows.cli import main
    from workflows.synth import write_trial

    root = tmp_path_factory.mktemp("anatref")
    write_trial(root, SPEC, subjects=[1])
    cfg = root / "first.yaml"
    cfg.write_text("anat:\n  anatomical_reference: first\n")
    out = root / "derivatives"
    assert main([str(root / "bids"), str(out), "participant", "--participant-label", "02",
                 "--config", str(cfg), "--work-dir", str(root / "work"), "--nprocs", "2",
                 "--stages", "inventory", "anat_reference", "anat", "lesion_changes"]) == 0
    return root, out


def _img(out, ses, name):
    return nib.load(out / f"sub-02/ses-{ses}/anat/sub-02_ses-{ses}_{name}")


@pytest.mark.integration
def test_first_reference_puts_every_session_on_one_grid(first_run):
    root, out = first_run
    base, follow = SPEC.sessions
    ref = nib.load(out / "sub-02/anat/sub-02_desc-subjectref_T1w.nii.gz")
    raw = nib.load(root / f"bids/sub-02/ses-{base}/anat/sub-02_ses-{base}_T1w.nii.gz")
    assert ref.shape == raw.shape and np.allclose(ref.affine, raw.affine)
    for ses in (base, follow):
        xfm = (
            out / f"sub-02/ses-{ses}/anat/sub-02_ses-{ses}_from-T1w_to-subject_mode-image_xfm.json"
        )
        assert xfm.exists()
        for name in ("desc-preproc_T1w.nii.gz", "desc-brain_mask.nii.gz", "dseg.nii.gz",
                     "label-lesion_mask.nii.gz"):
            img = _img(out, ses, name)
            assert img.shape == ref.shape and np.allclose(img.affine, ref.affine), (ses, name)
        meta = json.loads(
            (out / f"sub-02/ses-{ses}/anat/sub-02_ses-{ses}_desc-preproc_T1w.json").read_text()
        )
        assert "subject reference (first)" in meta["Parameters"]["grid"]
    # the brain itself does not change in six months: its masks agree voxel by voxel
    masks = [_img(out, s, "desc-brain_mask.nii.gz").get_fdata() > 0 for s in (base, follow)]
    assert _dice(*masks) > 0.97


@pytest.mark.integration
def test_first_reference_carries_t1w_lesion_masks_and_finds_the_new_lesion(first_run):
    root, out = first_run
    base, follow = SPEC.sessions
    subject = make_subject(SPEC, 1)
    ours = _img(out, follow, "label-lesion_mask.nii.gz")
    # truth of ses-m06 brought onto the reference (baseline) grid by the TRUE head movement
    truth = nib.load(
        root
        / f"truth/sub-02/ses-{follow}/anat/sub-02_ses-{follow}_space-T1w_label-lesion_mask.nii.gz"
    )
    pts = nib.affines.apply_affine(ours.affine, np.indices(ours.shape).reshape(3, -1).T)
    src = subject.from_template(follow, "T1w")(subject.to_template(base, "T1w")(pts))
    ijk = nib.affines.apply_affine(np.linalg.inv(truth.affine), src).T
    carried = ndimage.map_coordinates(np.asarray(truth.dataobj, np.float32), ijk, order=1)
    dice = _dice(ours.get_fdata() > 0, carried.reshape(ours.shape) >= 0.5)
    # two resamplings of a binary mask of small lesions between rotated 2 mm grids
    # (provided mask -> reference, truth -> reference) cap this near 0.85
    assert dice > 0.75, dice
    # the baseline is the reference itself: its provided mask is carried unchanged
    provided = nib.load(root / f"bids/derivatives/lesions/sub-02/ses-{base}/anat/"
                        f"sub-02_ses-{base}_space-T1w_label-lesion_mask.nii.gz")
    np.testing.assert_array_equal(_img(out, base, "label-lesion_mask.nii.gz").get_fdata() > 0,
                                  provided.get_fdata() > 0)
    changes = pd.read_csv(
        out / f"sub-02/ses-{follow}/anat/sub-02_ses-{follow}_desc-changes_lesions.tsv", sep="\t"
    )
    assert (changes["status"] == "new").sum() >= 1
    meta = json.loads(
        (
            out / f"sub-02/ses-{follow}/anat/sub-02_ses-{follow}_desc-changes_lesions.json"
        ).read_text()
    )
    assert meta["Parameters"]["registration"].startswith("none")

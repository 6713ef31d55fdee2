"""Structural science library (:mod:`pipeline.anat`) against the phantom's truth.

Everything is simulated in memory from the tiny preset (2 mm). Template priors
and masks are brought to each grid with the phantom's exact mapping (what the
registration stage estimates in the pipeline), so these tests measure the
structural methods alone.
"""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest

from pipeline.anat.brain import correct_bias, extract_brain
from pipeline.anat.lesions import (
    LOCATIONS,
    classify_lesions,
    compare_lesions,
    label_lesions,
    lesion_totals,
    segment_lesions_flair,
)
from pipeline.anat.segment import segment_tissues
from pipeline.anat.volumes import tissue_volumes
from pipeline.errors import InputError
from pipeline.phantom.anatomy import grid_points, lesion_probability, sample_template
from pipeline.phantom.trial import (
    FOV,
    ORIENTATION,
    PRESETS,
    acquisition_grid,
    make_subject,
    simulate_acquisition,
)
from pipeline.templates import load_mni_template

SPEC = PRESETS["tiny"]
MASKS = ("ventricles", "cortex", "infratentorial")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


def _template_on_grid(subject, session, contrast, shape, affine, names):
    """Template maps sampled (linearly) on an acquisition grid via the exact mapping."""
    tpl = load_mni_template(SPEC.template_resolution)
    inv = np.linalg.inv(tpl.affine)
    mni = subject.to_template(session, contrast)(grid_points(shape, affine))
    return {n: sample_template(inv, getattr(tpl, n).astype(np.float32), mni).reshape(shape)
            for n in names}


def _acquire(subject, s_idx: int, contrast: str):
    ses = SPEC.sessions[s_idx]
    data, tissues, aff = simulate_acquisition(SPEC, subject, s_idx, contrast)
    shape = data.shape
    img = nib.Nifti1Image(np.clip(np.round(data), 0, 32767).astype(np.int16), aff)
    priors = _template_on_grid(subject, ses, contrast, shape, aff, ("gm", "wm", "csf", "brain"))
    return img, tissues, priors


@pytest.fixture(scope="module")
def phantom():
    """Subject 01: baseline T1w and FLAIR, m06 FLAIR, with truth and priors."""
    subject = make_subject(SPEC, 0)
    t1, t1_truth, t1_priors = _acquire(subject, 0, "T1w")
    flair, flair_truth, flair_priors = _acquire(subject, 0, "FLAIR")
    flair_m06, flair_m06_truth, flair_m06_priors = _acquire(subject, 1, "FLAIR")
    return {
        "subject": subject, "t1": t1, "t1_truth": t1_truth, "t1_priors": t1_priors,
        "flair": flair, "flair_truth": flair_truth, "flair_priors": flair_priors,
        "flair_m06": flair_m06, "flair_m06_truth": flair_m06_truth,
        "flair_m06_priors": flair_m06_priors,
    }


@pytest.fixture(scope="module")
def brain(phantom):
    return extract_brain(phantom["t1"], method="threshold")


@pytest.fixture(scope="module")
def segmentation(phantom, brain):
    lesion = phantom["t1_truth"]["lesion"] >= 0.5
    start = time.perf_counter()
    seg = segment_tissues(
        phantom["t1"], brain.mask,
        priors={k: phantom["t1_priors"][k] for k in ("gm", "wm", "csf")}, lesion_mask=lesion,
    )
    print(f"segmentation of the 2 mm T1w: {time.perf_counter() - start:.1f} s")
    return seg, lesion


# --------------------------------------------------------------------------- brain


def test_brain_extraction_with_and_without_prior(phantom, brain):
    truth = phantom["t1_truth"]["brain"] >= 0.5
    d_plain = _dice(brain.mask, truth)
    with_prior = extract_brain(phantom["t1"], method="threshold",
                               prior_mask=phantom["t1_priors"]["brain"] >= 0.5)
    d_prior = _dice(with_prior.mask, truth)
    print(f"brain Dice: no prior {d_plain:.3f}, with prior {d_prior:.3f}")
    assert brain.method == "threshold-morphology"
    assert with_prior.method == "threshold-morphology+prior"
    assert d_plain >= 0.95 and d_prior >= 0.95
    assert brain.brain.shape == phantom["t1"].shape


def test_deepbet_brain_mask_on_the_phantom(phantom):
    truth = phantom["t1_truth"]["brain"] >= 0.5
    result = extract_brain(phantom["t1"])  # default: deepbet, skull_stripped auto
    d = _dice(result.mask, truth)
    print(f"deepbet brain Dice on the 2 mm phantom T1w: {d:.3f}")
    assert result.method == "deepbet" and d >= 0.97
    assert result.parameters["skull_stripped"]["detected"] is False


def test_skull_stripped_input_uses_the_support(phantom):
    truth = phantom["t1_truth"]["brain"] >= 0.5
    data = np.asarray(phantom["t1"].dataobj, dtype=np.float32) * truth
    stripped = extract_brain(nib.Nifti1Image(data, phantom["t1"].affine))
    assert stripped.method == "support"
    assert stripped.parameters["skull_stripped"]["detected"] is True
    assert _dice(stripped.mask, truth) > 0.99
    # the user's word overrides the detection, both ways
    forced = extract_brain(phantom["t1"], skull_stripped=True)
    assert forced.method == "support" and forced.parameters["skull_stripped"] == {"setting": True}
    raw = extract_brain(nib.Nifti1Image(data, phantom["t1"].affine), skull_stripped=False)
    assert raw.method == "deepbet"
    with pytest.raises(ValueError, match="skull_stripped"):
        extract_brain(phantom["t1"], skull_stripped="maybe")


def test_bias_correction_flattens_white_matter(phantom):
    t1, truth = phantom["t1"], phantom["t1_truth"]
    pure_wm = truth["wm"] > 0.97
    corrected, field = correct_bias(
        t1, truth["brain"] >= 0.5, reference=phantom["t1_priors"]["wm"] > 0.9, return_field=True
    )
    raw = np.asarray(t1.dataobj, dtype=np.float32)[pure_wm]
    cor = np.asarray(corrected.dataobj)[pure_wm]
    cv_raw, cv_cor = raw.std() / raw.mean(), cor.std() / cor.mean()
    print(f"pure-WM coefficient of variation: raw {cv_raw:.4f}, corrected {cv_cor:.4f}")
    assert cv_cor < cv_raw
    assert abs(np.mean(field[truth["brain"] >= 0.5]) - 1) < 0.05


# --------------------------------------------------------------------------- tissues


def test_segmentation_accuracy_and_volumes(phantom, segmentation):
    seg, lesion = segmentation
    truth = phantom["t1_truth"]
    tissue = np.stack([truth[k] for k in ("csf", "gm", "wm", "lesion")], axis=-1)
    truth_labels = np.where(truth["brain"] >= 0.5, tissue.argmax(-1) + 1, 0)
    wm_dice = _dice(seg.labels == 3, truth_labels == 3)
    vox = float(np.prod(phantom["t1"].header.get_zooms()[:3]))
    vols = tissue_volumes(seg, voxel_volume_mm3=vox, lesion_mask=lesion)
    errors = {k: vols[f"{k}_mm3"] / (float(truth[k].sum()) * vox) - 1 for k in ("gm", "wm")}
    print(f"WM Dice {wm_dice:.3f}; volume errors GM {errors['gm']:+.3f}, WM {errors['wm']:+.3f}")
    assert wm_dice >= 0.85
    assert abs(errors["gm"]) < 0.05 and abs(errors["wm"]) < 0.05
    inside = seg.labels > 0
    total = seg.gm + seg.wm + seg.csf + seg.lesion
    np.testing.assert_allclose(total[inside], 1.0, atol=1e-4)
    assert np.all(total[~inside] == 0)
    assert seg.gm.dtype == np.float32


def test_lesion_voxels_are_never_grey_matter(segmentation):
    seg, lesion = segmentation
    assert lesion.any()
    assert np.all(seg.labels[lesion] == 4)
    assert np.all(seg.gm[lesion] == 0) and np.all(seg.wm[lesion] == 0)
    assert np.all(seg.csf[lesion] == 0)


def test_volume_table_is_consistent(segmentation):
    seg, lesion = segmentation
    vols = tissue_volumes(seg, voxel_volume_mm3=8.0, lesion_mask=lesion)
    assert vols["brain_mm3"] == pytest.approx(vols["gm_mm3"] + vols["wm_mm3"] + vols["lesion_mm3"])
    assert vols["icv_mm3"] == pytest.approx(
        vols["brain_mm3"] + vols["csf_mm3"], rel=1e-4
    )  # fractions sum to one in the mask
    assert vols["lesion_mm3"] == pytest.approx(lesion.sum() * 8.0)
    assert 0 < vols["nawm_mm3"] < vols["wm_mm3"]
    assert 0.6 < vols["bpf"] < 1


# --------------------------------------------------------------------------- lesions


def test_lesion_classes_match_the_phantom():
    """Truth lesion masks of both tiny subjects (m06: all lesions) with warped masks."""
    agree, total = 0, 0
    for index in range(SPEC.n_subjects):
        subject = make_subject(SPEC, index)
        ses = SPEC.sessions[-1]
        shape, aff = acquisition_grid(FOV["T1w"], SPEC.t1_voxel_mm, ORIENTATION["T1w"])
        masks = _template_on_grid(subject, ses, "T1w", shape, aff, (*MASKS, "brain"))
        mni = subject.to_template(ses, "T1w")(grid_points(shape, aff))
        lesion = lesion_probability(mni, subject.lesions, len(SPEC.sessions) - 1)
        labels, n = label_lesions(lesion.reshape(shape) >= 0.5, [SPEC.t1_voxel_mm] * 3)
        table = classify_lesions(labels, affine=aff, brain_mask=masks["brain"] >= 0.5,
                                 **{k: masks[k] >= 0.5 for k in MASKS})
        assert len(table) == n == len(subject.lesions)
        assert set(table["location"]) <= set(LOCATIONS)
        found = table[["centroid_x", "centroid_y", "centroid_z"]].to_numpy()
        for les in subject.lesions:
            centre = subject.from_template(ses, "T1w")(np.asarray([les.centre_mni]))[0]
            d = np.linalg.norm(found - centre, axis=1)
            total += 1
            agree += d.min() < 3 and table["location"].iloc[int(d.argmin())] == les.location
        totals = lesion_totals(table)
        assert list(totals["location"]) == [*LOCATIONS, "total"]
        assert totals["count"].iloc[-1] == n
        assert totals["volume_mm3"].iloc[-1] == pytest.approx(table["volume_mm3"].sum())
    print(f"lesion location agreement {agree}/{total}")
    assert agree / total >= 0.9


def test_automatic_flair_segmentation(phantom):
    p, truth = phantom["flair_priors"], phantom["flair_truth"]
    mask, params = segment_lesions_flair(
        phantom["flair"], p["wm"], truth["brain"] >= 0.5, gm_prob=p["gm"], csf_prob=p["csf"]
    )
    dice = _dice(mask, truth["lesion"] >= 0.5)
    wm_only, _ = segment_lesions_flair(phantom["flair"], p["wm"], truth["brain"] >= 0.5)
    dice_wm_only = _dice(wm_only, truth["lesion"] >= 0.5)
    print(
        f"FLAIR lesion Dice {dice:.3f} (WM prior only: {dice_wm_only:.3f}); {params['n_lesions']} lesions"
    )
    assert dice >= 0.6 and dice_wm_only >= 0.6
    assert params["nawm_sd"] > 0 and params["z_threshold"] == 3.0


def test_new_lesion_at_follow_up_is_found(phantom):
    """Automatic FLAIR masks of both sessions, follow-up moved rigidly onto the baseline grid."""
    subject = phantom["subject"]
    masks = {}
    for key in ("flair", "flair_m06"):
        p, truth = phantom[f"{key}_priors"], phantom[f"{key}_truth"]
        masks[key], _ = segment_lesions_flair(
            phantom[key], p["wm"], truth["brain"] >= 0.5, gm_prob=p["gm"], csf_prob=p["csf"]
        )
    base_img, fu_img = phantom["flair"], phantom["flair_m06"]
    # same subject, same native anatomy: sessions differ by head pose only (rigid)
    pose = {s: subject.poses[s]["FLAIR"].matrix for s in SPEC.sessions}
    vox = (np.linalg.inv(fu_img.affine) @ np.linalg.inv(pose["m06"]) @ pose["baseline"]
           @ base_img.affine)
    ijk = np.indices(base_img.shape).reshape(3, -1).astype(float)
    coords = vox[:3, :3] @ ijk + vox[:3, 3:]
    from scipy import ndimage

    moved = ndimage.map_coordinates(masks["flair_m06"].astype(np.float32), coords, order=1)
    follow = moved.reshape(base_img.shape) >= 0.5
    zooms = np.abs(np.diag(base_img.affine)[:3])
    table = compare_lesions(
        label_lesions(masks["flair"], zooms)[0], label_lesions(follow, zooms)[0], voxel_size=zooms
    )
    print(table)
    new = [les for les in subject.lesions if les.first_session == 1]
    assert len(new) == 1
    assert list(table["status"]) == ["new"]
    centre_mni = np.asarray([new[0].centre_mni])
    centre = subject.from_template("baseline", "FLAIR")(centre_mni)[0]
    com = table[["centroid_i", "centroid_j", "centroid_k"]].to_numpy(dtype=float)[0]
    world = base_img.affine[:3, :3] @ com + base_img.affine[:3, 3]
    assert np.linalg.norm(world - centre) < 4.0


def test_compare_lesions_definitions():
    base = np.zeros((20, 20, 20), bool)
    base[2:4, 2:4, 2:4] = True  # 8 voxels: stays
    base[10:12, 10:12, 10:12] = True  # 8 voxels: grows to 27
    follow = base.copy()
    follow[10:13, 10:13, 10:13] = True
    follow[16:19, 16:19, 2:5] = True  # 27 voxels, new
    follow[16, 2, 16] = True  # 1 voxel, new but below the size floor
    table = compare_lesions(base, follow, voxel_size=1.0, min_new_mm3=10)
    assert sorted(table["status"]) == ["enlarging", "new"]
    full = compare_lesions(base, follow, voxel_size=1.0, min_new_mm3=10, include_stable=True)
    assert sorted(full["status"]) == ["enlarging", "new", "new_below_size", "stable"]
    grown = full[full["status"] == "enlarging"].iloc[0]
    assert grown["baseline_volume_mm3"] == 8 and grown["volume_mm3"] == 27


def test_a_mask_difference_needs_a_flair_increase_to_count_as_a_change():
    from pipeline.anat.lesions import confirm_with_flair, flair_increase

    rng = np.random.default_rng(0)
    shape = (30, 30, 30)
    base_mask = np.zeros(shape, bool)
    follow_mask = np.zeros(shape, bool)
    follow_mask[5:9, 5:9, 5:9] = True  # a real new lesion: the FLAIR brightens there
    follow_mask[20:24, 20:24, 20:24] = True  # only the segmentation differs
    base = 1000 + rng.normal(0, 30, shape)
    follow = 1000 + rng.normal(0, 30, shape)
    follow[5:9, 5:9, 5:9] += 400
    nawm = ~follow_mask
    labels = label_lesions(follow_mask, (1.0, 1.0, 1.0))[0]
    inc = flair_increase(labels, base_mask, base, follow, nawm, voxel_size=1.0, fwhm_mm=2.0)
    real_id, fake_id = labels[6, 6, 6], labels[21, 21, 21]
    assert 0.2 < inc[real_id] < 0.41 and abs(inc[fake_id]) < 0.02
    table = confirm_with_flair(compare_lesions(base_mask, follow_mask, voxel_size=1.0), inc)
    status = dict(zip(table["followup_id"], table["status"], strict=True))
    assert status == {real_id: "new", fake_id: "unconfirmed_new"}
    # a lesion that grew by less than the volume rule's 50 % is enlarging if it brightened
    base_mask[12:16, 5:9, 5:9] = True  # 64 voxels at baseline
    follow_mask[12:17, 5:9, 5:9] = True  # 80 voxels at follow-up: +25 %
    follow[16, 5:9, 5:9] += 600
    labels = label_lesions(follow_mask, (1.0, 1.0, 1.0))[0]
    inc = flair_increase(labels, base_mask, base, follow, ~follow_mask & ~base_mask,
                         voxel_size=1.0, fwhm_mm=1.0)
    full = compare_lesions(base_mask, follow_mask, voxel_size=1.0, include_stable=True)
    grown_id = labels[14, 6, 6]
    assert full.set_index("followup_id").loc[grown_id, "status"] == "stable"
    decided = confirm_with_flair(full, inc).set_index("followup_id")["status"]
    assert decided[grown_id] == "enlarging"
    assert decided[labels[21, 21, 21]] == "unconfirmed_new" and decided[labels[6, 6, 6]] == "new"
    # a uniform change of scale between sessions is not a change (NAWM normalisation)
    inc2 = flair_increase(labels, base_mask, base, 1.3 * base, nawm, voxel_size=1.0, fwhm_mm=2.0)
    assert all(abs(v) < 0.01 for v in inc2.values())


def test_label_lesions_connectivity_and_size():
    m = np.zeros((10, 10, 10), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # diagonal neighbours: one lesion with 26-connectivity
    m[6:8, 6:8, 6:8] = True
    labels, n = label_lesions(m, (1.0, 1.0, 1.0), min_volume_mm3=3.0)
    assert n == 1 and labels.max() == 1 and labels[6, 6, 6] == 1
    labels, n = label_lesions(m, (1.0, 1.0, 1.0), min_volume_mm3=0.0)
    assert n == 2 and labels[1, 1, 1] == labels[2, 2, 2]


# --------------------------------------------------------------------------- bad input


def test_empty_masks_and_images_are_clear_errors(phantom):
    t1 = phantom["t1"]
    empty = np.zeros(t1.shape, bool)
    with pytest.raises(InputError, match="empty"):
        segment_tissues(t1, empty)
    with pytest.raises(InputError, match="empty"):
        extract_brain(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)))
    with pytest.raises(InputError, match="shape"):
        segment_tissues(t1, np.ones((3, 3, 3), bool))
    labels, n = label_lesions(empty, (2.0, 2.0, 2.0))
    assert n == 0
    table = classify_lesions(labels, affine=t1.affine, ventricles=empty, cortex=empty,
                             infratentorial=empty)
    assert table.empty and list(lesion_totals(table)["count"]) == [0] * 5


def test_four_dimensional_t1_is_an_input_error(tmp_path):
    path = tmp_path / "t1_4d.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6, 3), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="3-D") as err:
        extract_brain(path)
    assert err.value.path == str(path)
    with pytest.raises(InputError, match="3-D"):
        segment_tissues(nib.load(path), np.ones((6, 6, 6), bool))

"""DWI ROIs and the ROI table: exact geometry, independent statistics, planted RD change."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.dwi.rois import (
    atlas_rois,
    build_rois,
    describe_roi_columns,
    nawm_lesion_loss,
    roi_table,
)
from pipeline.errors import InputError

METRICS = ("fa", "md", "ad", "rd")


def _truth(ph, key: str) -> np.ndarray:
    return np.asarray(ph.truth_images[f"space-dwi_{key}"].dataobj)


def _rois_of(ph) -> dict[str, np.ndarray]:
    zooms = ph.images["dwi"].header.get_zooms()[:3]
    return build_rois(
        _truth(ph, "label-WM_probseg"),
        _truth(ph, "label-lesion_probseg") >= 0.5,
        _truth(ph, "desc-hemi_dseg"),
        voxel_size_mm=zooms,
        brain_mask=_truth(ph, "desc-brain_mask"),
    )


def _truth_maps(ph) -> dict[str, np.ndarray]:
    return {m: _truth(ph, f"model-tensor_param-{m}_dwimap") for m in METRICS}


def test_nawm_geometry_is_exact():
    shape = (30, 20, 20)
    wm_prob = np.zeros(shape)
    wm_prob[2:28, 3:17, 3:17] = 0.9
    wm_prob[10, 10, 10] = 0.4  # below threshold
    lesion = np.zeros(shape, bool)
    lesion[7:9, 9:11, 9:11] = True
    hemi = np.zeros(shape, np.uint8)
    hemi[:15] = 1
    hemi[15:] = 2
    vox = (1.0, 1.0, 2.0)
    rois = build_rois(wm_prob, lesion, hemi, voxel_size_mm=vox, lesion_margin_mm=2.0, ring_mm=3.0)
    dist = ndimage.distance_transform_edt(~lesion, sampling=vox)
    wm = wm_prob >= 0.5
    np.testing.assert_array_equal(rois["WM"], wm)
    np.testing.assert_array_equal(rois["NAWM"], wm & (dist > 2.0))
    np.testing.assert_array_equal(rois["NAWM_L"] | rois["NAWM_R"], rois["NAWM"])
    assert not (rois["NAWM_L"] & rois["NAWM_R"]).any()
    assert not rois["NAWM_R"][:15].any() and not rois["NAWM_L"][15:].any()
    np.testing.assert_array_equal(rois["perilesion"], wm & ~lesion & (dist <= 3.0))
    loss = nawm_lesion_loss(rois)
    expect_l = 1 - rois["NAWM_L"].sum() / rois["WM_L"].sum()
    assert loss["NAWM_L"] == pytest.approx(expect_l) and loss["NAWM_L"] > 0
    assert loss["NAWM_R"] == pytest.approx(0.0)
    with pytest.raises(InputError, match="hemisphere"):
        build_rois(wm_prob, lesion, hemi + 3, voxel_size_mm=vox)
    with pytest.raises(ValueError, match="wm_threshold"):
        build_rois(wm_prob, lesion, hemi, voxel_size_mm=vox, wm_threshold=0)


def test_roi_table_matches_numpy_and_handles_empty(tiny_phantom_sessions):
    ph = tiny_phantom_sessions[0]
    rois = _rois_of(ph)
    rois["empty"] = np.zeros_like(rois["WM"])
    maps = _truth_maps(ph)
    loss = nawm_lesion_loss(rois)
    table = roi_table(maps, rois, lesion_loss=loss)
    assert len(table) == len(rois) * len(METRICS)
    for roi in ("NAWM_L", "lesion", "perilesion"):
        for m in METRICS:
            row = table[(table.roi == roi) & (table.metric == m)].iloc[0]
            vals = maps[m][rois[roi]].astype(float) * (1e3 if m != "fa" else 1.0)
            assert row.n_voxels == vals.size > 0
            assert row["mean"] == pytest.approx(vals.mean(), rel=1e-9)
            assert row["median"] == pytest.approx(np.median(vals), rel=1e-9)
            assert row["sd"] == pytest.approx(vals.std(ddof=1), rel=1e-9)
            assert row.units == ("unitless" if m == "fa" else "um^2/ms")
    nawm_l = table[(table.roi == "NAWM_L") & (table.metric == "md")].iloc[0]
    assert nawm_l.lesion_loss_fraction == pytest.approx(loss["NAWM_L"])
    assert 0.7 < nawm_l["median"] < 1.0  # WM MD in um^2/ms
    assert table[table.roi == "lesion"].lesion_loss_fraction.isna().all()
    empty = table[table.roi == "empty"]
    assert (empty.n_voxels == 0).all() and empty[["mean", "median", "sd"]].isna().all().all()
    desc = describe_roi_columns()
    assert set(table.columns) <= set(desc)
    assert all("Description" in v and "LongName" in v for v in desc.values())


def test_atlas_rois():
    lab = np.zeros((4, 4, 4), np.int16)
    lab[:2] = 3
    lab[2:, :2] = 7
    rois = atlas_rois(lab, {3: "frontal", 7: "occipital", 9: "absent"})
    assert rois["frontal"].sum() == 32 and rois["occipital"].sum() == 16
    assert not rois["absent"].any()
    with pytest.raises(InputError, match="integer"):
        atlas_rois(lab + 0.5, {3: "x"})


def test_planted_rd_change_with_truth_maps(tiny_phantom_sessions):
    """Median RD in NAWM_L drops 6 % from baseline to m06; NAWM_R unchanged."""
    med = {}
    for ph in tiny_phantom_sessions:
        t = roi_table(_truth_maps(ph), _rois_of(ph))
        med[ph.session] = t[t.metric == "rd"].set_index("roi")["median"]
    change = med["m06"] / med["baseline"] - 1
    assert change["NAWM_L"] == pytest.approx(-0.06, abs=0.005)
    assert abs(change["NAWM_R"]) < 0.005


@pytest.mark.slow
def test_planted_rd_change_with_a_real_fit(tiny_phantom_sessions):
    """MP-PCA + motion correction + WLS tensor fit on the noisy phantom (~30 s).

    Measured: RD change NAWM_L -6.46 % (truth -6 %), NAWM_R -1.36 % (truth 0).
    Median relative errors vs the truth maps in NAWM_L / NAWM_R (both sessions):
    MD -0.4 to -0.5 %, FA -8 to -11 %, AD -5 to -6 %, RD +5.4 to +7 %. The FA
    under-estimate is already present without any processing of ours (the
    phantom's own trilinear resampling of moved volumes mixes neighbouring
    orientations) and grows a little with MP-PCA and cubic resampling; MD is
    unbiased.
    """
    from dipy.reconst.dti import TensorModel

    from pipeline.dwi.gradtable import DwiGradients
    from pipeline.dwi.motion import correct_motion
    from pipeline.dwi.preprocess import denoise

    med, truth_med = {}, {}
    for ph in tiny_phantom_sessions:
        img = ph.images["dwi"]
        data = np.asarray(img.dataobj, dtype=np.float32)
        g = DwiGradients.from_world(ph.bvals, ph.bvecs_world, img.affine)
        brain = _truth(ph, "desc-brain_mask") > 0
        rois = _rois_of(ph)
        den, _ = denoise(data, g, mask=brain)
        mc = correct_motion(den, img.affine, g, brain)
        fit = TensorModel(mc.gradients.dipy_gtab(), fit_method="WLS").fit(mc.data, mask=brain)
        maps = {"fa": fit.fa, "md": fit.md, "ad": fit.ad, "rd": fit.rd}
        t = roi_table(maps, rois)
        tt = roi_table(_truth_maps(ph), rois)
        med[ph.session] = t.set_index(["roi", "metric"])["median"]
        truth_med[ph.session] = tt.set_index(["roi", "metric"])["median"]
    change = med["m06"] / med["baseline"] - 1
    report = {
        "rd_change_L": change[("NAWM_L", "rd")],
        "rd_change_R": change[("NAWM_R", "rd")],
    }
    for ses in med:
        for roi in ("NAWM_L", "NAWM_R"):
            for m in METRICS:
                report[f"{ses}_{roi}_{m}_relerr"] = (
                    med[ses][(roi, m)] / truth_med[ses][(roi, m)] - 1
                )
    print(report)
    assert abs(report["rd_change_L"] + 0.06) < 0.015
    assert abs(report["rd_change_R"]) < 0.015
    assert all(abs(v) < 0.01 for k, v in report.items() if k.endswith("md_relerr"))
    # FA/AD/RD miss the 5 % goal (see the docstring): guard against getting worse
    assert all(abs(v) < 0.12 for k, v in report.items() if k.endswith("relerr"))

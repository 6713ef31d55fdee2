"""Structural methods on a real MS patient (T1, FLAIR, consensus lesion mask).

Data: patient 19 of the open MS lesion database of Lesjak, Pernuš, Likar and
Špiclin, "A Novel Public MR Image Dataset of Multiple Sclerosis Patients With
Lesion Segmentations Based on Multi-rater Consensus", Neuroinformatics 16
(2018, online 2017), doi:10.1007/s12021-017-9348-7, licence CC-BY (copy of
muschellij2/open_ms_data, cross_sectional/MNI/patient19). Images are 1 mm,
skull-stripped, N4-corrected and registered to MNI space; they are block-averaged
to 2 mm here to keep the test light, and the MNI152 template priors are sampled
directly on that grid (the data are already in MNI space, linearly).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared/data/real/openms-patient19"
FILES = ("T1.nii.gz", "FLAIR.nii.gz", "GOLD_STANDARD.nii.gz")

pytestmark = pytest.mark.skipif(
    not all((DATA / f).exists() for f in FILES),
    reason=f"real MS patient data not found in {DATA} (T1, FLAIR, GOLD_STANDARD)",
)


def _block_mean(a: np.ndarray, f: int = 2) -> np.ndarray:
    s = [n // f * f for n in a.shape]
    a = a[: s[0], : s[1], : s[2]]
    return a.reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean(axis=(1, 3, 5))


def _dice(a, b) -> float:
    return float(2 * np.sum(a & b) / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def real():
    from pipeline.phantom.anatomy import grid_points, sample_template
    from pipeline.templates import load_mni_template

    out = {}
    for name in ("T1", "FLAIR", "GOLD_STANDARD"):
        img = nib.load(DATA / f"{name}.nii.gz")
        out[name] = _block_mean(np.asarray(img.dataobj, dtype=np.float32))
        aff = img.affine.copy()
        aff[:3, :3] *= 2
        aff[:3, 3] = img.affine[:3, :3] @ np.full(3, 0.5) + img.affine[:3, 3]
        out["affine"] = aff
    out["lesion"] = out.pop("GOLD_STANDARD") >= 0.5
    tpl = load_mni_template(1)
    inv = np.linalg.inv(tpl.affine)
    pts = grid_points(out["T1"].shape, out["affine"])
    for k in ("gm", "wm", "csf", "ventricles", "cortex", "infratentorial"):
        arr = np.asarray(getattr(tpl, k), dtype=np.float32)
        out[f"tpl_{k}"] = sample_template(inv, arr, pts).reshape(out["T1"].shape)
    return out


@pytest.fixture(scope="module")
def t1_and_mask(real):
    from pipeline.anat.brain import extract_brain

    t1 = nib.Nifti1Image(real["T1"], real["affine"])
    return t1, extract_brain(t1)


def test_brain_extraction_on_skull_stripped_t1(real, t1_and_mask):
    _, result = t1_and_mask
    support = real["T1"] != 0
    coverage = (result.mask & support).sum() / support.sum()
    outside = (result.mask & ~support).sum() / support.sum()
    print(f"brain mask covers {coverage:.3f} of the stripped T1, {outside:.3f} outside")
    assert result.method == "support"
    assert coverage >= 0.97 and outside <= 0.02


def test_segmentation_fractions_are_plausible(real, t1_and_mask):
    from pipeline.anat.segment import segment_tissues
    from pipeline.anat.volumes import tissue_volumes

    t1, result = t1_and_mask
    lesion = real["lesion"] & result.mask
    seg = segment_tissues(
        t1, result.mask, priors={k: real[f"tpl_{k}"] for k in ("gm", "wm", "csf")},
        lesion_mask=lesion,
    )
    vols = tissue_volumes(seg, voxel_volume_mm3=8.0, lesion_mask=lesion)
    print(
        f"GM/ICV {vols['gm_fraction_icv']:.3f}, WM/ICV {vols['wm_fraction_icv']:.3f}, "
        f"CSF/ICV {vols['csf_fraction_icv']:.3f}, lesion/ICV {vols['lesion_fraction_icv']:.3f}, "
        f"means {[round(m) for m in seg.parameters['means']]}"
    )
    assert 0.25 <= vols["wm_fraction_icv"] <= 0.45
    assert 0.35 <= vols["gm_fraction_icv"] <= 0.6
    assert np.all(seg.labels[lesion] == 4) and np.all(seg.gm[lesion] == 0)


def test_automatic_flair_lesions_against_consensus(real, t1_and_mask):
    from pipeline.anat.lesions import segment_lesions_flair

    _, result = t1_and_mask
    flair = nib.Nifti1Image(real["FLAIR"], real["affine"])
    mask, params = segment_lesions_flair(
        flair, real["tpl_wm"], result.mask, gm_prob=real["tpl_gm"], csf_prob=real["tpl_csf"]
    )
    dice = _dice(mask, real["lesion"])
    print(
        f"real FLAIR lesion Dice {dice:.3f}: {mask.sum() * 8 / 1000:.1f} ml found, "
        f"{real['lesion'].sum() * 8 / 1000:.1f} ml consensus, {params['n_lesions']} lesions"
    )
    assert dice >= 0.5


def test_lesion_table_on_the_consensus_mask(real):
    from pipeline.anat.lesions import classify_lesions, label_lesions, lesion_totals

    labels, n = label_lesions(real["lesion"], (2.0, 2.0, 2.0), min_volume_mm3=0.0)
    table = classify_lesions(
        labels, affine=real["affine"],
        **{k: real[f"tpl_{k}"] >= 0.5 for k in ("ventricles", "cortex", "infratentorial")},
    )
    totals = lesion_totals(table).set_index("location")
    print(totals)
    assert n == len(table) > 10
    assert totals.loc["total", "volume_mm3"] == pytest.approx(real["lesion"].sum() * 8.0)
    # a high lesion load is dominated, by volume, by confluent periventricular lesions
    assert totals.loc["periventricular", "volume_mm3"] >= 0.5 * totals.loc["total", "volume_mm3"]
    assert totals.loc["periventricular", "count"] >= 1

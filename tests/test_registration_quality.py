"""Registration quality: a right alignment of one person passes, another anatomy fails.

Real data: openms-longitudinal-patient01 (Lesjak et al., Neuroinformatics 2016,
doi:10.1007/s12021-016-9301-1, CC-BY; raw clinical T1w / FLAIR with the database's brain
mask and transforms) and openms-patient19 (Lesjak et al. 2018, CC-BY). The "wrong
anatomy" is patient19's FLAIR registered to patient01's T1w by the pipeline's own
registration; the flag must fire. Phantom: the BOLD reference of subject 01 registered to
its own T1w and to subject 02's T1w.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests import realdata as rd


def _save(img, path):
    nib.save(img, path)
    return str(path)


@pytest.mark.slow
@pytest.mark.skipif(not rd.longitudinal_available(), reason="openms-longitudinal-patient01 missing")
def test_real_same_person_passes_and_another_person_fails(tmp_path):
    from pipeline.registration import Transform, registration_quality
    from workflows.interfaces.registration import register_to_t1w

    t1 = nib.load(rd.image_path("1", "T1w"))
    mask = rd.brain_mask("1", "T1w")
    mask_img = nib.Nifti1Image(mask.astype(np.uint8), t1.affine)
    brain = nib.Nifti1Image(np.asarray(t1.dataobj, np.float32) * mask, t1.affine)
    flair = nib.load(rd.image_path("1", "FLAIR"))
    right = Transform("FLAIR", "T1w", rd.image_to_image("1", "FLAIR", "T1w"))
    q_right = registration_quality(brain, flair, right, mask=mask_img)
    # another person's FLAIR through the registration the DWI and BOLD stages use
    other = rd.REAL / "openms-patient19" / "FLAIR.nii.gz"
    xfm = register_to_t1w(str(other), _save(t1, tmp_path / "t1.nii.gz"),
                          _save(mask_img, tmp_path / "mask.nii.gz"), source="FLAIR",
                          out=tmp_path / "xfm.json")
    q_wrong = json.loads((tmp_path / "xfm.json").read_text())["quality"]
    print("same person", q_right, "another person", q_wrong)
    assert q_right["passed"] and q_right["nmi_sharpness"] > 0.3  # measured 0.41
    assert not q_wrong["passed"] and q_wrong["nmi_sharpness"] < 0.15  # measured 0.05
    assert Transform.load(xfm).quality == q_wrong


@pytest.mark.slow
def test_phantom_bold_to_another_subjects_t1w_is_flagged(tmp_path):
    from pipeline.func.preprocess import preprocess_bold
    from pipeline.phantom.trial import PRESETS, make_subject, simulate_session
    from workflows.interfaces.registration import register_to_t1w

    spec = PRESETS["tiny"]
    own, other = (simulate_session(spec, make_subject(spec, i), 0) for i in (0, 1))
    pre = preprocess_bold(own.images["bold"])
    ref = _save(nib.Nifti1Image(pre.reference, pre.affine), tmp_path / "boldref.nii.gz")
    quality = {}
    for name, ph in (("own", own), ("other", other)):
        t1 = _save(ph.images["T1w"], tmp_path / f"{name}_t1.nii.gz")
        mask = _save(ph.truth_images["space-T1w_desc-brain_mask"], tmp_path / f"{name}_mask.nii.gz")
        path = register_to_t1w(ref, t1, mask, source="bold", out=tmp_path / f"{name}_xfm.json")
        quality[name] = json.loads(Path(path).read_text())["quality"]
    print({k: v["nmi_sharpness"] for k, v in quality.items()})
    assert quality["own"]["passed"] and not quality["other"]["passed"]

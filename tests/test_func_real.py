"""BOLD realignment on a real run of a still participant.

Data: one functional run of the studyforrest project (Sengupta et al., "A studyforrest
extension, retinotopic mapping and localization of higher visual areas", Sci Data 3:160093,
2016; DICOMs from datalad/example-dicom-functional, Open Data Commons PDDL): 80 x 80 x 35 x
156 at 3 x 3 x 3.3 mm, TR 2 s. The participant held very still (maximum translation about
0.3 mm, rotation about 0.4 degrees by independent estimates).

References: the raw data's own DVARS (realignment must not add temporal jitter), and MRtrix3
``mrregister -type rigid`` (sum of squared differences, its own multi-resolution scheme) of
every fourth volume to the same reference image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

BOLD = Path(__file__).resolve().parents[2] / "shared/data/real/studyforrest-bold/bold.nii.gz"

pytestmark = pytest.mark.skipif(not BOLD.exists(), reason=f"real BOLD run not found: {BOLD}")


@pytest.fixture(scope="module")
def realigned():
    from pipeline.func.preprocess import compute_dvars, preprocess_bold

    img = nib.load(BOLD)
    pre = preprocess_bold(img)
    raw_dvars, _ = compute_dvars(np.asarray(img.dataobj, dtype=np.float32), pre.mask)
    return img, pre, raw_dvars


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    r = a[:3, :3].T @ b[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1.0, 1.0))))


def test_realignment_of_a_still_participant_invents_no_motion(realigned):
    _, pre, raw_dvars = realigned
    fd = pre.framewise_displacement
    censored = int(np.sum(fd > 0.5))  # the default scrubbing threshold (func.fd_threshold_mm)
    print(f"FD max {fd.max():.3f} mm, mean {fd.mean():.3f} mm; censored {censored}; "
          f"median DVARS raw {np.median(raw_dvars[1:]):.2f}, realigned "
          f"{np.median(pre.dvars[1:]):.2f}")
    assert fd.max() < 0.5 and censored == 0
    assert np.median(pre.dvars[1:]) <= np.median(raw_dvars[1:])
    trans = np.abs(pre.motion_params[:, :3]).max()
    assert trans < 1.0  # a still participant: sub-millimetre over the run


def test_realignment_agrees_with_mrtrix3(realigned, tmp_path):
    if not shutil.which("mrregister"):
        if os.environ.get("CI"):
            pytest.fail("MRtrix3 mrregister not found on PATH, but CI is set")
        pytest.skip("MRtrix3 (mrregister) not installed")
    img, pre, _ = realigned
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(pre.reference, img.affine), tmp_path / "ref.nii")
    centre = nib.affines.apply_affine(img.affine, np.argwhere(pre.mask).mean(axis=0))
    d_trans, d_rot = [], []
    for k in range(0, data.shape[3], 4):
        nib.save(nib.Nifti1Image(data[..., k], img.affine), tmp_path / "vol.nii")
        subprocess.run(["mrregister", str(tmp_path / "vol.nii"), str(tmp_path / "ref.nii"),
                        "-type", "rigid", "-rigid", str(tmp_path / "T.txt"), "-nthreads", "1",
                        "-quiet", "-force"], check=True)
        # mrregister's -rigid matrix maps template (reference) points to moving points,
        # the same pull-back as ours (checked on a volume moved by a known transform)
        theirs = np.loadtxt(tmp_path / "T.txt", comments="#")
        ours = pre.affines[k]
        d_trans.append(np.linalg.norm(nib.affines.apply_affine(ours, centre)
                                      - nib.affines.apply_affine(theirs, centre)))
        d_rot.append(_rotation_deg(ours, theirs))
    med_t, med_r = float(np.median(d_trans)), float(np.median(d_rot))
    print(f"{len(d_trans)} volumes vs mrregister: translation of the brain centre median "
          f"{med_t:.3f} mm (max {max(d_trans):.3f}), rotation median {med_r:.3f} deg "
          f"(max {max(d_rot):.3f})")
    assert med_t <= 0.15 and med_r <= 0.15

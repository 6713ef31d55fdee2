"""Our tensor fit against MRtrix3 ``dwi2tensor`` + ``tensor2metric``: tiny phantom and real series.

Our default WLS (OLS, then one pass re-weighted by the OLS-predicted signal,
= DIPY's WLS) is compared with MRtrix3's default estimator: one WLS pass with
the *measured* signal as weights, then two passes re-weighted by the predicted
signal (``-iter 2``). No ``dwi2tensor`` option runs exactly our estimator: in
MRtrix3 3.0.3 the weights are re-estimated from the prediction only when
``-iter`` is at least 2, so ``dwi2tensor -ols -iter 1`` is plain OLS (it equals
``-ols -iter 0`` and our OLS: median |dFA| 0 on both data sets) and
``-ols -iter 2`` is our WLS plus one more re-weighted pass. Measured, median
|dFA| and median relative |dMD| in the brain mask:

===========================================  ==================  ====================
ours vs MRtrix3 3.0.3                        tiny phantom        real Philips series
===========================================  ==================  ====================
WLS vs default (``-iter 2``)                 5.2e-4, 0.006 %     1.3e-3, 0.016 %
WLS vs ``-ols -iter 2``                      5.5e-4, 0.006 %     1.6e-3, 0.020 %
WLS vs ``-ols -iter 1`` (= OLS)              4.0e-3, 0.021 %     9.1e-3, 0.071 %
OLS vs ``-ols -iter 1`` (= OLS)              0, 0                0, 0
WLS vs ``-iter 1`` (measured-signal WLS)     5.3e-3, 1.24 %      1.8e-2, 3.64 %
===========================================  ==================  ====================

(phantom: the tiny preset's session 0 with its true brain mask, 70 k voxels;
real: ``philips-dti32/dwi.nii.gz``, 1 b = 0 + 32 x b = 1000, ``median_otsu``
mask of :func:`pipeline.dwi.preprocess.dwi_brain_mask`, 200 k voxels). The
tests assert the default comparison and the OLS identity.

Gradient frames: MRtrix reads ``-fslgrad`` b-vectors in the FSL convention of
the image's transform and fits in scanner (world) coordinates; we fit on the
voxel array with the b-vectors as written. FA/MD/AD/RD do not depend on the
frame; for v1 we map ours to world with :func:`pipeline.gradients.fsl_to_world`
and compare with ``tensor2metric -vector`` (world frame).

Without the ``dwi2tensor`` binary the test is skipped, except when the ``CI``
environment variable is set (CI installs MRtrix3), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.dwi.tensor import fit_tensor
from pipeline.gradients import fsl_to_world, world_to_fsl

pytestmark = pytest.mark.integration


def _require_mrtrix() -> None:
    if shutil.which("dwi2tensor") and shutil.which("tensor2metric"):
        return
    if os.environ.get("CI"):
        pytest.fail("MRtrix3 (dwi2tensor, tensor2metric) not found on PATH, but CI is set")
    pytest.skip("MRtrix3 (dwi2tensor, tensor2metric) not installed")


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"


def test_wls_agrees_with_mrtrix(tiny_phantom_sessions, tmp_path):
    from dipy.core.gradients import gradient_table

    _require_mrtrix()
    ph = tiny_phantom_sessions[0]
    img, ti = ph.images["dwi"], ph.truth_images
    mask = np.asarray(ti["space-dwi_desc-brain_mask"].dataobj) > 0
    bvecs = world_to_fsl(ph.bvecs_world, img.affine)  # as msmri synth writes them
    dwi, mask_path = tmp_path / "dwi.nii.gz", tmp_path / "mask.nii.gz"
    bval, bvec = tmp_path / "dwi.bval", tmp_path / "dwi.bvec"
    nib.save(img, dwi)
    nib.save(ti["space-dwi_desc-brain_mask"], mask_path)
    bval.write_text(" ".join(f"{b:g}" for b in ph.bvals) + "\n")
    bvec.write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in bvecs.T) + "\n")

    common = ["-quiet", "-force", "-nthreads", "1"]
    _run(["dwi2tensor", str(dwi), str(tmp_path / "dt.nii"), "-mask", str(mask_path),
          "-fslgrad", str(bvec), str(bval), *common])
    out = {k: tmp_path / f"mrtrix_{k}.nii" for k in ("fa", "md", "ad", "rd", "v1")}
    _run(["tensor2metric", str(tmp_path / "dt.nii"), "-mask", str(mask_path),
          "-fa", str(out["fa"]), "-adc", str(out["md"]), "-ad", str(out["ad"]),
          "-rd", str(out["rd"]), "-vector", str(out["v1"]), "-modulate", "none", *common])
    mr = {k: np.asarray(nib.load(p).dataobj, dtype=np.float64) for k, p in out.items()}

    # ours, from the NIfTI and gradient files as a pipeline would read them
    data = np.asarray(nib.load(dwi).dataobj)
    gtab = gradient_table(np.loadtxt(bval), bvecs=np.loadtxt(bvec).T)
    ours = fit_tensor(data, gtab, mask)
    assert ours.n_voxels_fitted == mask.sum()

    d_fa = np.abs(ours.fa[mask] - mr["fa"][mask])
    rel = {
        k: np.abs(getattr(ours, k)[mask] - mr[k][mask]) / mr[k][mask] for k in ("md", "ad", "rd")
    }
    summary = (
        f"median |dFA| {np.median(d_fa):.2e} (p99 {np.percentile(d_fa, 99):.2e}); median rel. "
        + ", ".join(f"d{k.upper()} {100 * np.median(v):.3f} %" for k, v in rel.items())
    )
    print(f"\nours WLS vs MRtrix3 dwi2tensor (default): {summary}")
    assert np.median(d_fa) < 0.01, summary
    assert np.median(rel["md"]) < 0.02, summary
    assert np.median(rel["ad"]) < 0.02, summary
    assert np.median(rel["rd"]) < 0.02, summary

    # principal direction: ours in the FSL voxel frame -> world; MRtrix's is in world
    aniso = mask & (ours.fa > 0.3)
    assert aniso.sum() > 1000
    world = fsl_to_world(ours.v1[aniso], img.affine)
    cos = np.abs(np.sum(world * mr["v1"][aniso], axis=1))
    angle = np.degrees(np.arccos(np.clip(cos, 0, 1)))
    print(f"v1 angle to MRtrix3 (FA > 0.3): median {np.median(angle):.3f} deg, "
          f"p99 {np.percentile(angle, 99):.2f} deg")
    assert np.median(angle) < 1.0
    assert np.percentile(angle, 95) < 5.0


def test_wls_white_matter_medians_on_trial_session(tiny_phantom_sessions):
    """On the tiny-preset session as written to disk (int16, SNR 25, small head motion
    that is not corrected here) the white-matter medians stay close to the truth: MD
    within 2 %, FA within 8 % (measured -6 %, the motion blur lowers it)."""
    from dipy.core.gradients import gradient_table

    ph = tiny_phantom_sessions[0]
    img, ti = ph.images["dwi"], ph.truth_images
    mask = np.asarray(ti["space-dwi_desc-brain_mask"].dataobj) > 0
    wm = mask & (np.asarray(ti["space-dwi_label-WM_probseg"].dataobj) > 0.9)
    wm &= np.asarray(ti["space-dwi_label-lesion_probseg"].dataobj) < 0.01
    gtab = gradient_table(ph.bvals, bvecs=world_to_fsl(ph.bvecs_world, img.affine))
    maps = fit_tensor(np.asarray(img.dataobj), gtab, mask)
    for name, tol in (("fa", 0.08), ("md", 0.02)):
        truth = np.asarray(ti[f"space-dwi_model-tensor_param-{name}_dwimap"].dataobj)
        rel = np.median(getattr(maps, name)[wm]) / np.median(truth[wm]) - 1
        assert abs(rel) < tol, (name, rel)


PHILIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "philips-dti32"


@pytest.mark.skipif(not (PHILIPS / "dwi.nii.gz").exists(), reason=f"real DWI not found: {PHILIPS}")
def test_wls_agrees_with_mrtrix_on_real_series(tmp_path):
    """Real Philips series: our WLS vs the MRtrix3 default within 0.005 in FA and 1 % in MD
    (measured 1.3e-3 and 0.016 %), and ``-ols -iter 1`` is OLS (equal to our OLS)."""
    from pipeline.dwi.gradtable import DwiGradients
    from pipeline.dwi.preprocess import dwi_brain_mask

    _require_mrtrix()
    dwi, bval, bvec = (PHILIPS / f"dwi.{ext}" for ext in ("nii.gz", "bval", "bvec"))
    img = nib.load(dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    grads = DwiGradients.from_files(dwi, bval, bvec)
    mask = dwi_brain_mask(data, grads)
    mask_path = tmp_path / "mask.nii"
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), img.affine), mask_path)
    common = ["-quiet", "-force", "-nthreads", "2"]
    mr = {}
    for name, extra in (("default", []), ("ols_iter1", ["-ols", "-iter", "1"])):
        dt, fa, md = (tmp_path / f"{name}_{k}.nii" for k in ("dt", "fa", "md"))
        _run(["dwi2tensor", str(dwi), str(dt), "-mask", str(mask_path),
              "-fslgrad", str(bvec), str(bval), *extra, *common])
        _run(["tensor2metric", str(dt), "-mask", str(mask_path), "-fa", str(fa), "-adc", str(md),
              *common])
        mr[name] = {k: np.asarray(nib.load(p).dataobj, dtype=np.float64)[mask]
                    for k, p in (("fa", fa), ("md", md))}
    gtab = grads.dipy_gtab()
    ours = {m: fit_tensor(data, gtab, mask, method=m, n_procs=2) for m in ("WLS", "OLS")}

    def agreement(a, b):
        ok = b["md"] > 1e-5
        rel = np.abs(a.md[mask][ok] - b["md"][ok]) / b["md"][ok]
        return float(np.median(np.abs(a.fa[mask] - b["fa"]))), float(np.median(rel))

    d_fa, d_md = agreement(ours["WLS"], mr["default"])
    print(f"\nreal series, ours WLS vs dwi2tensor default: median |dFA| {d_fa:.2e}, "
          f"median rel. |dMD| {100 * d_md:.3f} %")
    assert d_fa < 0.005 and d_md < 0.01, (d_fa, d_md)
    # MRtrix3 3.0.3 re-weights only with -iter >= 2: -ols -iter 1 is OLS, not our WLS
    d_fa, d_md = agreement(ours["OLS"], mr["ols_iter1"])
    assert d_fa < 1e-6 and d_md < 1e-6, ("-ols -iter 1 is no longer plain OLS", d_fa, d_md)
    d_fa, _ = agreement(ours["WLS"], mr["ols_iter1"])
    assert d_fa > 0.005, d_fa  # measured 9.1e-3


def test_missing_mrtrix_skips_locally_but_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        _require_mrtrix()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _require_mrtrix()

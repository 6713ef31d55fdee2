"""Realignment of real series on one core: msmri against MRtrix3 ``mrregister``.

Data (../shared/data/real):

* studyforrest-bold: one real BOLD run of a still participant (Sengupta et al., Sci Data
  2016; Open Data Commons PDDL), 80 x 80 x 35 x 156 at 3 x 3 x 3.3 mm.
* philips-dti32: a real 32-direction Philips DTI series of a subject who moved
  (neurolabusc/dcm_qa_philips, BSD-2), 128 x 128 x 60 x 33 at 1.75 x 1.75 x 2.5 mm.

For each series: wall time of msmri's realignment (BOLD: ``preprocess_bold``'s
least-squares realignment; DWI: ``correct_motion`` with the eddy-current model), then
MRtrix3 ``mrregister -type rigid -nthreads 1`` of every volume to the same reference
(BOLD: msmri's reference image; DWI: the raw mean diffusion-weighted image, MRtrix3
having no prediction-based DWI realigner), and the ratio. Also prints the accuracy
figures the tests assert (FD on the BOLD; residual misalignment on the DWI).

Usage::

    python benchmarks/bench_realign.py [--series bold dwi] [--every 1]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REAL = ROOT.parent / "shared" / "data" / "real"


def _mrregister_all(data: np.ndarray, affine: np.ndarray, reference: np.ndarray, volumes,
                    tmp: Path) -> float:
    nib.save(nib.Nifti1Image(reference.astype(np.float32), affine), tmp / "ref.nii")
    t0 = time.perf_counter()
    for k in volumes:
        nib.save(nib.Nifti1Image(np.asarray(data[..., k], np.float32), affine), tmp / "vol.nii")
        subprocess.run(["mrregister", str(tmp / "vol.nii"), str(tmp / "ref.nii"), "-type",
                        "rigid", "-rigid", str(tmp / "T.txt"), "-nthreads", "1", "-quiet",
                        "-force"], check=True)
    return time.perf_counter() - t0


def bench_bold(every: int, tmp: Path) -> None:
    from pipeline.func.preprocess import preprocess_bold

    img = nib.load(REAL / "studyforrest-bold" / "bold.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    t0 = time.perf_counter()
    pre = preprocess_bold(nib.Nifti1Image(data, img.affine, img.header))
    ours = time.perf_counter() - t0
    vols = range(0, data.shape[3], every)
    theirs = _mrregister_all(data, img.affine, pre.reference, vols, tmp) * every
    fd = pre.framewise_displacement
    print(f"BOLD {data.shape}: msmri {ours:.1f} s (whole preprocessing), MRtrix3 mrregister "
          f"{theirs:.1f} s ({f'estimated from every {every}th volume, ' if every > 1 else ''}"
          f"{data.shape[3]} volumes); ratio msmri / MRtrix3 {ours / theirs:.2f}; "
          f"FD max {fd.max():.3f} mm, mean {fd.mean():.3f} mm")


def bench_dwi(every: int, tmp: Path) -> None:
    from pipeline.dwi.gradtable import DwiGradients
    from pipeline.dwi.motion import correct_motion

    d = REAL / "philips-dti32"
    img = nib.load(d / "dwi.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    grads = DwiGradients.from_files(d / "dwi.nii.gz", d / "dwi.bval", d / "dwi.bvec")
    t0 = time.perf_counter()
    mc = correct_motion(data, img.affine, grads)
    ours = time.perf_counter() - t0
    dw = np.flatnonzero(grads.dw_mask)
    vols = dw[::every]
    theirs = _mrregister_all(data, img.affine, data[..., dw].mean(axis=-1), vols, tmp)
    theirs *= len(dw) / len(vols)
    print(f"DWI {data.shape}: msmri motion + eddy {ours:.1f} s, MRtrix3 mrregister (rigid "
          f"only, to the mean DWI) {theirs:.1f} s for {len(dw)} volumes; ratio {ours / theirs:.2f}; "
          f"excluded {int(mc.dropout_outliers.sum() + mc.motion_outliers.sum())}, FD max "
          f"{mc.framewise_displacement.max():.2f} mm, |eddy| max {np.abs(mc.eddy).max():.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", nargs="+", default=["bold", "dwi"], choices=["bold", "dwi"])
    ap.add_argument("--every", type=int, default=1, help="time mrregister on every n-th volume")
    args = ap.parse_args()
    if not shutil.which("mrregister"):
        sys.exit("MRtrix3 mrregister not found on PATH (apt-get install mrtrix3)")
    from pipeline.parallel import single_threaded_blas

    with tempfile.TemporaryDirectory() as tmp, single_threaded_blas():
        for s in args.series:
            {"bold": bench_bold, "dwi": bench_dwi}[s](args.every, Path(tmp))


if __name__ == "__main__":
    main()

"""Benchmark the structural stage per subject-session on the trial preset.

Writes one subject of the ``trial`` preset (1.5 mm T1w and FLAIR) with
``msmri synth``'s writer, then runs ``msmri BIDS OUT participant --stages anat``
for one session in a child process and reports its wall time and peak memory
(the sampled resident set of its whole process tree, Nipype MultiProc workers
included, and the exact ``ru_maxrss`` of its largest process), against the
stage's targets (<= 120 s, <= 2 GB on a 2-core machine). The reference inside the same run is the T1w -> MNI
registration alone (``register_to_template``), the stage's largest single step,
timed in its own child process so the ratio shows what the rest costs.

It also prints the ceiling of carrying a *binary* lesion mask drawn on the FLAIR
grid onto the T1w grid: the phantom's true FLAIR mask resampled with the *true*
FLAIR -> T1w mapping (no registration error at all), compared with the true T1w
mask, next to the stage's own result. Small lesions on two rotated grids lose
Dice to partial-volume voxels whatever the registration.

Usage::

    python benchmarks/bench_anat.py [--session baseline] [--nprocs 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REG_CODE = """
import sys, nibabel as nib, numpy as np
from pipeline.registration import register_to_template
t1 = nib.load(sys.argv[1]); brain = nib.load(sys.argv[2])
register_to_template(nib.Nifti1Image(np.asarray(t1.dataobj, dtype=np.float32) *
                     (np.asarray(brain.dataobj) > 0), t1.affine))
"""


def _dice(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def carry_ceiling(root: Path, session: str) -> float:
    """Dice of the true FLAIR-grid mask carried by the true mapping to the T1w grid."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from pipeline.phantom.trial import PRESETS, make_subject

    subject = make_subject(PRESETS["trial"], 0)
    stem = root / f"truth/sub-01/ses-{session}/anat/sub-01_ses-{session}_"
    flair = nib.load(f"{stem}space-FLAIR_label-lesion_mask.nii.gz")
    t1 = nib.load(f"{stem}space-T1w_label-lesion_mask.nii.gz")
    pts = nib.affines.apply_affine(t1.affine, np.indices(t1.shape).reshape(3, -1).T)
    flair_pts = subject.from_template(session, "FLAIR")(subject.to_template(session, "T1w")(pts))
    ijk = nib.affines.apply_affine(np.linalg.inv(flair.affine), flair_pts).T
    soft = ndimage.map_coordinates(np.asarray(flair.dataobj, np.float32), ijk, order=1)
    return _dice(soft.reshape(t1.shape) >= 0.5, np.asarray(t1.dataobj) > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--session", default="baseline")
    ap.add_argument("--nprocs", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None, help="reuse / keep data in this folder")
    args = ap.parse_args()

    from pipeline.phantom.trial import PRESETS
    from workflows.synth import write_trial

    root = args.keep or Path(tempfile.mkdtemp(prefix="msmri-bench-anat-"))
    if not (root / "bids/sub-01").exists():
        t0 = time.perf_counter()
        write_trial(root, PRESETS["trial"], subjects=[0])
        print(
            f"data: trial preset subject 01 written in {time.perf_counter() - t0:.1f} s -> {root}"
        )
    bids, out = root / "bids", root / "derivatives"
    t1 = bids / f"sub-01/ses-{args.session}/anat/sub-01_ses-{args.session}_T1w.nii.gz"
    truth_mask = (
        root
        / f"truth/sub-01/ses-{args.session}/anat/sub-01_ses-{args.session}_space-T1w_desc-brain_mask.nii.gz"
    )
    msmri = str(Path(sys.executable).with_name("msmri"))
    from _measure import run_child

    stage = run_child([
        msmri, str(bids), str(out), "participant", "--participant-label", "01",
        "--session-label", args.session, "--stages", "anat", "--nprocs", str(args.nprocs),
        "--work-dir", str(root / "work"),
    ])
    reg = run_child([sys.executable, "-c", REG_CODE, str(t1), str(truth_mask)])
    print(f"structural stage, trial preset (1.5 mm T1w + FLAIR), sub-01 ses-{args.session}, "
          f"--nprocs {args.nprocs}")
    print(f"  {'what':<38}{'wall s':>9}{'target':>9}")
    print(f"  {'whole anat stage':<38}{stage.wall_s:>9.1f}{120:>9}")
    print(f"  {'reference: T1w->MNI registration only':<38}{reg.wall_s:>9.1f}")
    print(f"  ratio stage / registration: {stage.wall_s / reg.wall_s:.2f}")
    print(f"  peak memory of the stage, whole process tree (sampled): {stage.peak_tree_mb:.0f} MB"
          f" (target 2048 MB); largest single process: {stage.peak_process_mb:.0f} MB")
    import nibabel as nib

    ses = f"sub-01/ses-{args.session}/anat/sub-01_ses-{args.session}_"
    ours = nib.load(out / f"{ses}label-lesion_mask.nii.gz").dataobj
    truth = nib.load(root / f"truth/{ses}space-T1w_label-lesion_mask.nii.gz").dataobj
    print("  provided FLAIR-grid lesion mask carried to the T1w grid, Dice vs truth:")
    print(f"    stage (estimated FLAIR->T1w registration): {_dice(ours, truth):.3f}")
    print(f"    ceiling (true mapping, no registration error): {carry_ceiling(root, args.session):.3f}")


if __name__ == "__main__":
    main()

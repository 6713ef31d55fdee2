"""The structural stage on real MS scans: accuracy, wall time and peak memory.

Data (../shared/data/real, both CC-BY, Lesjak et al.):

* openms-longitudinal-patient01 (Neuroinformatics 2016, doi:10.1007/s12021-016-9301-1):
  raw 2-D clinical T1w / FLAIR / T2w with skull and neck (0.72 x 0.72 x 3-4 mm),
  two sessions; references: the database's brain mask and FLAIR / T1w transforms.
* openms-patient19 (Neuroinformatics 2018, doi:10.1007/s12021-017-9348-7): 1 mm,
  skull-stripped, MNI; reference: the consensus lesion mask of three raters.

For each brain-extraction method (``deepbet``, msmri's default, and ``threshold``,
the method used before), ``msmri BIDS OUT participant --stages anat`` runs in a child
process with one core, timed and its process tree's peak memory sampled; then it
prints the brain-mask Dice with the database mask, the ICV, the FLAIR -> T1w error
against the database's alignment (mean over the brain), the plausibility flag and,
on patient19, the lesion-wise detection (expert lesions >= 10 mm^3 overlapped),
precision (predicted lesions overlapping the expert mask), voxel Dice and volumes.

Usage::

    python benchmarks/bench_anat_clinical.py [--sessions 1 2] [--methods deepbet threshold]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _bids(root: Path, subject: str, files: dict[str, dict[str, Path]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "real MS scans", "BIDSVersion": "1.8.0", "DatasetType": "raw"})
    )
    for ses, mods in files.items():
        anat = root / f"sub-{subject}" / f"ses-{ses}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        for mod, src in mods.items():
            dst = anat / f"sub-{subject}_ses-{ses}_{mod}.nii.gz"
            if not dst.exists():
                os.symlink(src, dst)
    return root


def main() -> None:
    import nibabel as nib
    import numpy as np
    from _measure import run_child

    from pipeline.registration import Transform
    from tests import realdata
    from workflows.derivatives import read_plausibility, read_tsv

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", nargs="+", default=list(realdata.SESSIONS))
    ap.add_argument("--methods", nargs="+", default=["deepbet", "threshold"])
    args = ap.parse_args()
    msmri = str(Path(sys.executable).with_name("msmri"))
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    tmp = Path(tempfile.mkdtemp(prefix="msmri-bench-clinical-"))
    p01 = _bids(tmp / "p01", "01", {s: {m: realdata.image_path(s, m) for m in realdata.MODALITIES}
                                    for s in args.sessions})
    p19 = _bids(tmp / "p19", "19", {"1": {"T1w": realdata.PATIENT19 / "T1.nii.gz",
                                          "FLAIR": realdata.PATIENT19 / "FLAIR.nii.gz"}})
    print(f"{'data':14s} {'method':9s} {'wall s':>7s} {'peak MB':>8s} {'Dice':>6s} {'ICV l':>6s} "
          f"{'FLAIR mm':>8s} flag")
    walls: dict[str, list[float]] = {}
    for method in args.methods:
        cfg = tmp / f"{method}.yaml"
        cfg.write_text(f"anat:\n  brain_extraction: {method}\n")
        for name, bids, sub, sessions in (("patient01", p01, "01", args.sessions),
                                          ("patient19", p19, "19", ["1"])):
            for ses in sessions:
                out = tmp / f"out-{method}-{name}"
                cmd = [msmri, str(bids), str(out), "participant", "--participant-label", sub,
                       "--session-label", ses, "--stages", "anat", "--nprocs", "1",
                       "--config", str(cfg), "--work-dir", str(tmp / f"work-{method}-{name}")]
                run = run_child(cmd, env=env)
                walls.setdefault(method, []).append(run.wall_s)
                anat = out / f"sub-{sub}" / f"ses-{ses}" / "anat"
                stem = f"sub-{sub}_ses-{ses}_"
                mask_img = nib.load(anat / f"{stem}desc-brain_mask.nii.gz")
                mask = np.asarray(mask_img.dataobj) > 0
                icv = float(read_tsv(anat / f"{stem}volumes.tsv")["icv_mm3"].iloc[0]) / 1e6
                flag = read_plausibility(out, sub, ses)
                flag_txt = ("FLAGGED " + ",".join(flag["failed"])) if flag and flag["flagged"] else "ok"
                dice = err = float("nan")
                if name == "patient01":
                    dice = realdata.dice(mask, realdata.brain_mask(ses, "T1w"))
                    xfm = Transform.load(anat / f"{stem}from-FLAIR_to-T1w_mode-image_xfm.json")
                    pts = nib.affines.apply_affine(mask_img.affine, np.argwhere(mask))
                    ref = nib.affines.apply_affine(realdata.image_to_image(ses, "FLAIR", "T1w"), pts)
                    err = float(np.linalg.norm(xfm.target_to_source(pts) - ref, axis=1).mean())
                print(f"{name + ' ses-' + ses:14s} {method:9s} {run.wall_s:7.1f} "
                      f"{run.peak_tree_mb:8.0f} {dice:6.3f} {icv:6.2f} {err:8.2f} {flag_txt}")
                if name == "patient19":
                    pred = np.asarray(nib.load(anat / f"{stem}label-lesion_mask.nii.gz").dataobj) > 0
                    gold = np.asarray(nib.load(realdata.PATIENT19 / "GOLD_STANDARD.nii.gz").dataobj) > 0
                    m = realdata.lesion_metrics(pred, gold, (1.0, 1.0, 1.0))
                    print(f"    lesions: detection {m['detected']}/{m['n_truth']} = {m['detection']:.2f}, "
                          f"precision {m['n_pred'] - m['false_positives']}/{m['n_pred']} = "
                          f"{m['precision']:.2f}, voxel Dice {m['dice']:.3f}, volume "
                          f"{m['volume_pred_ml']:.1f} ml (expert {m['volume_truth_ml']:.1f} ml)")
    if len(walls) == 2:
        a, b = (np.median(walls[m]) for m in args.methods)
        print(f"median wall time {args.methods[0]} / {args.methods[1]}: {a / b:.2f}")
    print(f"targets: <= 300 s and <= 3000 MB per session on one core; folder {tmp}")


if __name__ == "__main__":
    main()

"""Brain extraction on real clinical scans: deepbet (ONNX) vs threshold + morphology.

Data: the raw T1w, FLAIR and T2w of both sessions of openms-longitudinal-patient01
(Lesjak et al., Neuroinformatics 2016, doi:10.1007/s12021-016-9301-1, CC-BY): 2-D
clinical scans with skull, scalp and neck, 0.51-0.91 mm in plane, 3-4 mm slices;
openms-patient19 (Lesjak et al., Neuroinformatics 2018, CC-BY; skull-stripped, MNI);
and one T1w of the synthetic phantom (trial preset).

Reference: the database's own brain mask (sources/brainmask_common-space.nii.gz)
carried onto each image's grid with the database's transforms; the phantom's true
brain mask. For each image and method it prints the Dice with the reference, the
mask volume, the skull-stripped evidence (fraction of non-zero voxels more than
5 mm outside the brain) and, for each method, the wall time and peak memory of a
child process on one thread. The threshold method is the one msmri used before
deepbet; the zero-fraction rule it used to call an image "skull-stripped" is shown
too.

Usage::

    python benchmarks/bench_brain_extraction.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
import nibabel as nib, numpy as np
from pipeline.anat.brain import extract_brain
img = nib.load(sys.argv[1])
t = time.perf_counter()
r = extract_brain(img, method=sys.argv[2], skull_stripped=json.loads(sys.argv[3]))
wall = time.perf_counter() - t
np.save(sys.argv[4], r.mask)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"wall_s": wall, "maxrss_mb": int(hwm) / 1024,
                  "method": r.method, "skull_stripped": r.parameters.get("skull_stripped")}))
"""


def run(path: Path, method: str, stripped, tmp: Path) -> tuple[dict, object]:
    import numpy as np

    out = tmp / "mask.npy"
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": ""}
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), method, json.dumps(stripped), str(out)],
                         check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def main() -> None:
    import nibabel as nib
    import numpy as np

    from pipeline.anat.brain import skull_stripped_evidence, voxel_sizes
    from tests import realdata

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="T1w of session 1 only")
    args = ap.parse_args()
    cases = []
    if realdata.longitudinal_available():
        mods = ("T1w",) if args.quick else realdata.MODALITIES
        sessions = ("1",) if args.quick else realdata.SESSIONS
        for s in sessions:
            for m in mods:
                cases.append((f"patient01 ses-{s} {m}", realdata.image_path(s, m),
                              realdata.brain_mask(s, m)))
    if (realdata.PATIENT19 / "T1.nii.gz").exists():
        cases.append(("patient19 T1 (stripped)", realdata.PATIENT19 / "T1.nii.gz", None))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from pipeline.phantom.trial import PRESETS, _nifti, make_subject, simulate_acquisition

        spec = PRESETS["trial"]
        data, tissues, aff = simulate_acquisition(spec, make_subject(spec, 0), 0, "T1w")
        nib.save(_nifti(data, aff), tmp / "phantom_T1w.nii.gz")
        cases.append(("phantom trial T1w", tmp / "phantom_T1w.nii.gz", tissues["brain"] >= 0.5))

        print(f"{'image':28s} {'method':22s} {'Dice':>6s} {'vol l':>6s} {'ref l':>6s} "
              f"{'outside':>7s} {'zeros':>6s} {'wall s':>7s} {'peak MB':>8s}")
        ratios = []
        for name, path, ref in cases:
            img = nib.load(path)
            raw = np.asarray(img.dataobj, dtype=np.float32)
            zooms = voxel_sizes(img.affine)
            vox_l = float(np.prod(zooms)) / 1e6
            zeros = float(np.mean(raw == 0))
            walls = {}
            for method, stripped in (("deepbet", "auto"), ("threshold", False)):
                info, mask = run(path, method, stripped, tmp)
                walls[method] = info["wall_s"]
                ev = skull_stripped_evidence(raw, mask, zooms)
                d = realdata.dice(mask, ref) if ref is not None else float("nan")
                ref_l = ref.sum() * vox_l if ref is not None else float("nan")
                label = f"{method} ({info['method']})"
                print(f"{name:28s} {label:22s} {d:6.3f} {mask.sum() * vox_l:6.2f} {ref_l:6.2f} "
                      f"{ev:7.3f} {zeros:6.2f} {info['wall_s']:7.1f} {info['maxrss_mb']:8.0f}")
            ratios.append(walls["deepbet"] / walls["threshold"])
        print(f"old rule 'skull-stripped if >= 25 % exact zeros' calls every patient01 image stripped; "
              f"deepbet / threshold wall-time ratio: median {np.median(ratios):.2f}")


if __name__ == "__main__":
    main()

"""Benchmark T1w brain -> MNI registration: affine only vs affine + SyN.

Data: the ``trial`` preset of the synthetic trial (1.5 mm T1w, 128 x 152 x 131),
subject 0, session ``baseline``, built with ``simulate_structural`` exactly as
``simulate_session`` builds it, skull-stripped with the true brain mask
(tissue ``brain >= 0.5``). Target: nilearn's MNI152 2009 template at 2 mm masked
by its brain mask; registration runs at 2 mm (``register_to_template``).

Each variant runs in a fresh child process limited to ``--threads`` threads
(default 1), so that wall time and peak memory (``ru_maxrss``) are its own.
"Base RSS" is the child's peak after imports and loading the inputs, before
registering. Landmark error: mean distance (mm) between the true and estimated
subject positions of 200 MNI points drawn inside the template brain mask (seed 0).

Usage::

    python benchmarks/bench_registration.py [--subject 0] [--session baseline] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

VARIANTS = {"affine": False, "affine+SyN": True}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def prepare(workdir: Path, subject_index: int, session: str) -> dict:
    """Write the skull-stripped T1w and the landmark truth into ``workdir``."""
    from pipeline.phantom.trial import (
        PRESETS,
        make_subject,
        simulate_acquisition,
    )
    from pipeline.registration import load_mni_template_brain

    spec = PRESETS["trial"]
    s_idx = spec.sessions.index(session)
    subject = make_subject(spec, subject_index)
    data, tissues, aff = simulate_acquisition(spec, subject, s_idx, "T1w")
    data = np.clip(np.round(data), 0, np.iinfo(np.int16).max).astype(np.int16)  # as written
    brain = (data * (tissues["brain"] >= 0.5)).astype(np.float32)
    nib.save(nib.Nifti1Image(brain, aff), workdir / "t1_brain.nii.gz")

    template = load_mni_template_brain(2)
    ijk = np.argwhere(np.asarray(template.dataobj) > 0)
    rng = np.random.default_rng(0)
    pts = nib.affines.apply_affine(template.affine, ijk[rng.choice(len(ijk), 200, replace=False)])
    truth = subject.from_template(session, "T1w")(pts)
    np.savez(workdir / "landmarks.npz", mni=pts, truth=truth)
    return {"shape": list(data.shape), "voxel_mm": spec.t1_voxel_mm}


def child(variant: str, workdir: Path) -> None:
    """Run one variant and print its figures as one JSON line."""
    from pipeline.registration import load_mni_template_brain, register_to_template

    t1 = nib.load(workdir / "t1_brain.nii.gz")
    t1 = nib.Nifti1Image(np.asarray(t1.dataobj), t1.affine)  # load into memory
    template = load_mni_template_brain(2)
    lm = np.load(workdir / "landmarks.npz")
    base = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    xfm = register_to_template(t1, template, syn=VARIANTS[variant], resolution_mm=2.0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    err = np.linalg.norm(xfm.target_to_source(lm["mni"]) - lm["truth"], axis=1)
    print(
        json.dumps(
            {
                "variant": variant,
                "wall_s": wall,
                "cpu_s": cpu,
                "peak_rss_mb": _rss_mb(),
                "base_rss_mb": base,
                "err_mean_mm": float(err.mean()),
                "err_p95_mm": float(np.percentile(err, 95)),
            }
        )
    )


def _run_child(what: str, workdir: Path, args: argparse.Namespace, env: dict) -> dict:
    # Linux keeps a process's peak RSS across fork and exec, so every heavy step
    # (including the data simulation) runs in its own child of this small parent.
    cmd = [sys.executable, __file__, "--child", what, str(workdir)]
    cmd += ["--subject", str(args.subject), "--session", args.session]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", type=int, default=0)
    ap.add_argument("--session", default="baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.child[0] == "prepare":
            info = prepare(Path(args.child[1]), args.subject, args.session)
            print(json.dumps(info))
        else:
            child(args.child[0], Path(args.child[1]))
        return 0

    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_registration_") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        info = _run_child("prepare", workdir, args, env)
        print(
            f"trial preset, subject {args.subject}, session {args.session}: T1w "
            f"{tuple(info['shape'])} at {info['voxel_mm']} mm -> MNI 2 mm "
            f"(data prepared in {time.perf_counter() - t0:.1f} s; {args.threads} thread(s))"
        )
        rows = [_run_child(variant, workdir, args, env) for variant in VARIANTS]
    print()
    print(
        f"{'variant':<12} {'wall s':>7} {'CPU s':>7} {'peak RSS MB':>12} {'base RSS MB':>12} "
        f"{'err mean mm':>12} {'err p95 mm':>11}"
    )
    for r in rows:
        print(
            f"{r['variant']:<12} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['peak_rss_mb']:>12.0f} "
            f"{r['base_rss_mb']:>12.0f} {r['err_mean_mm']:>12.2f} {r['err_p95_mm']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

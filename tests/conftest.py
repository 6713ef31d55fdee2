"""Shared pytest fixtures: tiny NIfTI writers and a tiny BIDS dataset builder.

All fixtures are function-scoped and write into ``tmp_path``; images are
8x8x6 voxels so that everything runs in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (8, 8, 6)
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])
AFFINE[:3, 3] = [-8.0, -8.0, -7.5]

# The fMRI settings the tiny phantom needs (its atlas and its short runs); the integration
# tests that run the fMRI stage on the tiny dataset merge this over the shipped defaults.
TINY_FUNC_CONFIG = """\
func:
  atlas: dosenbach       # the phantom's regions and planted edges are on the Dosenbach atlas
  min_duration_s: 120    # the tiny runs last 200 s (100 volumes at TR 2 s); default 240 s
  low_pass: null         # 100 volumes band-passed to 0.01-0.08 Hz leave ~4 residual dof with
                         # acompcor's 22 regressors; high-pass only keeps ~70
"""


def write_nifti(
    path: Path,
    data: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    shape: tuple[int, ...] = SHAPE,
    dtype: type | str = np.float32,
    tr: float | None = None,
    seed: int = 0,
) -> Path:
    """Write ``data`` (default: positive random values of ``shape``) as NIfTI-1."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        rng = np.random.default_rng(seed)
        data = (100 + 10 * rng.standard_normal(shape)).astype(dtype)
    data = np.asarray(data)
    img = nib.Nifti1Image(data, AFFINE if affine is None else affine)
    img.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms((*img.header.get_zooms()[:3], tr))
    nib.save(img, path)
    return path


def gradient_table(n_b0: int = 2, n_dirs: int = 12, bval: float = 1000.0, seed: int = 1):
    """Unit gradient directions (random, well spread) with ``n_b0`` leading b=0 volumes."""
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((n_dirs, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.concatenate([np.zeros(n_b0), np.full(n_dirs, bval)])
    bvecs = np.concatenate([np.zeros((n_b0, 3)), dirs])
    return bvals, bvecs


def write_gradients(
    bval_path: Path, bvec_path: Path, bvals, bvecs, *, transpose: bool = False
) -> tuple[Path, Path]:
    """Write FSL-style gradient files (bvec 3 x N, or N x 3 when ``transpose``)."""
    bvals = np.asarray(bvals, dtype=float)
    bvecs = np.asarray(bvecs, dtype=float)
    Path(bval_path).parent.mkdir(parents=True, exist_ok=True)
    Path(bval_path).write_text(" ".join(f"{b:g}" for b in bvals) + "\n")
    table = bvecs if transpose else bvecs.T
    Path(bvec_path).write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in table) + "\n")
    return Path(bval_path), Path(bvec_path)


@dataclass
class DwiFiles:
    dwi: Path
    bval: Path
    bvec: Path
    bvals: np.ndarray
    bvecs: np.ndarray


@pytest.fixture
def make_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_nifti("name.nii.gz", data=None, **kw)`` writes into tmp_path."""

    def _make(name: str = "img.nii.gz", data: np.ndarray | None = None, **kwargs) -> Path:
        return write_nifti(tmp_path / name, data, **kwargs)

    return _make


@pytest.fixture
def make_dwi(tmp_path: Path) -> Callable[..., DwiFiles]:
    """Factory writing a tiny DWI series and its gradient table.

    ``make_dwi(bvals=None, bvecs=None, n_volumes=None, transpose=False, stem="dwi")``;
    by default 2 b=0 + 12 directions at b=1000.  ``n_volumes`` overrides the
    number of image volumes (to create count mismatches).
    """

    def _make(
        bvals=None,
        bvecs=None,
        *,
        n_volumes: int | None = None,
        transpose: bool = False,
        stem: str = "dwi",
    ) -> DwiFiles:
        if bvals is None or bvecs is None:
            bvals, bvecs = gradient_table()
        bvals, bvecs = np.asarray(bvals, float), np.asarray(bvecs, float)
        n = len(bvals) if n_volumes is None else n_volumes
        dwi = write_nifti(tmp_path / f"{stem}.nii.gz", shape=(*SHAPE, n))
        bval, bvec = write_gradients(
            tmp_path / f"{stem}.bval", tmp_path / f"{stem}.bvec", bvals, bvecs, transpose=transpose
        )
        return DwiFiles(dwi, bval, bvec, bvals, bvecs)

    return _make


# ----------------------------------------------------------------- BIDS builder
def _write_json(path: Path, obj: Mapping) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_tsv(path: Path, header: list[str], rows: Iterable[Iterable[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


MODALITIES = ("T1w", "FLAIR", "dwi", "bold", "lesion")


def build_bids(
    root: Path,
    *,
    subjects: Iterable[str] = ("01", "02"),
    sessions: Iterable[str] = ("m00", "m03"),
    omit: Mapping[tuple[str, str], Iterable[str]] | None = None,
    lesion_space: str = "FLAIR",
    bold_volumes: int = 60,
    tr: float = 2.0,
) -> Path:
    """Write a tiny valid BIDS dataset with a ``derivatives/lesions`` dataset.

    Every (subject, session) gets T1w, FLAIR, DWI (+bval/bvec/json), resting
    BOLD (+json) and a lesion mask ``space-<lesion_space>_label-lesion_mask``,
    except the modalities listed in ``omit[(subject, session)]`` (names from
    :data:`MODALITIES`).
    """
    root = Path(root)
    omit = {k: set(v) for k, v in (omit or {}).items()}
    subjects, sessions = list(subjects), list(sessions)
    _write_json(
        root / "dataset_description.json",
        {"Name": "msmri tiny test dataset", "BIDSVersion": "1.9.0", "DatasetType": "raw"},
    )
    _write_tsv(
        root / "participants.tsv",
        ["participant_id", "age", "group"],
        [[f"sub-{s}", 30 + i, "treated" if i % 2 == 0 else "n/a"] for i, s in enumerate(subjects)],
    )
    (root / "README").write_text("Tiny synthetic dataset for msmri tests.\n")
    deriv = root / "derivatives" / "lesions"
    _write_json(
        deriv / "dataset_description.json",
        {
            "Name": "lesion masks",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "manual"}],
        },
    )
    bvals, bvecs = gradient_table()
    for i, sub in enumerate(subjects):
        _write_tsv(
            root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv",
            ["session_id", "months"],
            [[f"ses-{ses}", ses.lstrip("m") or "0"] for ses in sessions],
        )
        for j, ses in enumerate(sessions):
            skip = omit.get((sub, ses), set())
            base = root / f"sub-{sub}" / f"ses-{ses}"
            pre = f"sub-{sub}_ses-{ses}"
            seed = 10 * i + j
            if "T1w" not in skip:
                write_nifti(base / "anat" / f"{pre}_T1w.nii.gz", seed=seed)
            if "FLAIR" not in skip:
                write_nifti(base / "anat" / f"{pre}_FLAIR.nii.gz", seed=seed + 1)
            if "dwi" not in skip:
                write_nifti(base / "dwi" / f"{pre}_dwi.nii.gz", shape=(*SHAPE, len(bvals)))
                write_gradients(
                    base / "dwi" / f"{pre}_dwi.bval", base / "dwi" / f"{pre}_dwi.bvec", bvals, bvecs
                )
                _write_json(
                    base / "dwi" / f"{pre}_dwi.json",
                    {"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05},
                )
            if "bold" not in skip:
                write_nifti(
                    base / "func" / f"{pre}_task-rest_bold.nii.gz",
                    shape=(*SHAPE, bold_volumes),
                    tr=tr,
                )
                _write_json(
                    base / "func" / f"{pre}_task-rest_bold.json",
                    {"RepetitionTime": tr, "TaskName": "rest"},
                )
            if "lesion" not in skip:
                mask = np.zeros(SHAPE, dtype=np.uint8)
                mask[3:5, 3:5, 2:4] = 1
                write_nifti(
                    deriv
                    / f"sub-{sub}"
                    / f"ses-{ses}"
                    / "anat"
                    / f"{pre}_space-{lesion_space}_label-lesion_mask.nii.gz",
                    mask,
                )
    return root


@pytest.fixture
def make_bids(tmp_path: Path) -> Callable[..., Path]:
    """Factory fixture around :func:`build_bids`; ``make_bids(name="bids", **kw)``."""

    def _make(name: str = "bids", **kwargs) -> Path:
        return build_bids(tmp_path / name, **kwargs)

    return _make


@pytest.fixture
def tiny_bids(make_bids) -> Path:
    """2 subjects x 2 sessions; sub-01/ses-m03 lacks FLAIR, sub-02/ses-m03 lacks BOLD."""
    return make_bids(omit={("01", "m03"): {"FLAIR"}, ("02", "m03"): {"bold"}})


@pytest.fixture(scope="session")
def tiny_phantom_sessions():
    """Phantom images and truth of sub-01 of the tiny preset, both sessions (in memory).

    Returns a tuple ``(baseline, m06)`` of :class:`pipeline.phantom.trial.SessionPhantom`;
    about 20 s to build, once per test process.
    """
    from pipeline.phantom.trial import PRESETS, make_subject, simulate_session

    spec = PRESETS["tiny"]
    subject = make_subject(spec, 0)
    return tuple(simulate_session(spec, subject, i) for i in range(len(spec.sessions)))


REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def run_snakemake(
    *args: str, cwd: Path, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run the project's Snakefile with the test environment's ``snakemake`` and ``msmri``."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), *args],
        cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout,
    )


def tree_checksums(root: Path, *, skip: Iterable[str] = ("logs",)) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by relative path, leaving out top-level ``skip`` folders."""
    skip = set(skip)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in skip
    }

"""Snakemake layer: the DAG over a BIDS dataset, lint, formatting, a real local run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), *args],
        cwd=cwd, capture_output=True, text=True, env=env,
    )  # fmt: skip


def test_dry_run_builds_one_job_per_subject_session(tiny_bids, tmp_path):
    res = _snakemake("-n", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'out'}",
                     cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "inventory              4" in out or "inventory 4" in " ".join(out.split())
    assert "group_inventory        1" in out or "group_inventory 1" in " ".join(out.split())
    # tiny_bids: every subject-session has a DWI series -> one diffusion job each
    assert "dwi 4" in " ".join(out.split()) and "anat 4" in " ".join(out.split())
    # sub-02/ses-m03 has no BOLD -> one fMRI job for each of the other three
    assert "func 3" in " ".join(out.split())


def test_dry_run_honours_label_filters(tiny_bids, tmp_path):
    res = _snakemake("-n", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'o'}",
                     "participant_label=02", "session_label=m03", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "inventory 1" in text
    assert "sub-02_ses-m03_inventory.tsv" in text and "sub-01_" not in text


def test_first_reference_adds_one_reference_job_per_subject(tiny_bids, tmp_path):
    cfg = tmp_path / "first.yaml"
    cfg.write_text("anat:\n  anatomical_reference: first\n")
    res = _snakemake("-n", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'o'}",
                     f"msmri_config={cfg}", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "anat_reference 2" in text and "sub-01_desc-subjectref_T1w.nii.gz" in text


def test_lint_is_clean(tiny_bids, tmp_path):
    res = _snakemake("--lint", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'o'}",
                     cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Lints for" not in res.stdout + res.stderr


def test_snakefmt_check():
    files = [str(ROOT / "Snakefile"), *map(str, sorted((ROOT / "workflows/rules").glob("*.smk")))]
    res = subprocess.run([str(BIN / "snakefmt"), "--check", *files], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.integration
def test_local_run_writes_every_inventory(tiny_bids, tmp_path):
    out = tmp_path / "out"
    res = _snakemake("--cores", "2", "group_inventory", "--config", f"bids_dir={tiny_bids}", f"output_dir={out}",
                     cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(out.glob("sub-*/ses-*/*_inventory.tsv"))) == 4
    assert (out / "group/inventory.tsv").exists()
    assert (out / "logs/inventory/sub-01_ses-m00.log").exists()


@pytest.mark.parametrize("mode", ["raw", "fmriprep"])
def test_func_job_waits_for_the_structural_job_only_with_raw_bold(mode, tiny_bids, tmp_path):
    """fMRIPrep BOLD is already in MNI space with its confounds: no structural job is planned."""
    cfg = tmp_path / "func.yaml"
    prep = tmp_path / "fmriprep"
    prep.mkdir()
    cfg.write_text(f"func:\n  input: {mode}\n  fmriprep_dir: {prep if mode == 'fmriprep' else 'null'}\n")
    out = tmp_path / "o"
    target = out / "sub-01/ses-m00/func/sub-01_ses-m00_task-rest_desc-summary_bold.tsv"
    res = _snakemake("-n", str(target), "--config", f"bids_dir={tiny_bids}", f"output_dir={out}",
                     f"msmri_config={cfg}", cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "func 1" in text and "inventory 1" in text
    assert ("anat 1" in text) == (mode == "raw"), text

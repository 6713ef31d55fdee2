"""Snakemake layer: the DAG over a BIDS dataset, lint, formatting, a real local run."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, VENV_BIN, run_snakemake, tree_checksums

ROOT = REPO
BIN = VENV_BIN
LOCAL = REPO / "configs/profiles/local"


_snakemake = run_snakemake


def test_dry_run_builds_one_job_per_subject_session(tiny_bids, tmp_path):
    res = _snakemake("-n", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'out'}",
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "inventory              4" in out or "inventory 4" in " ".join(out.split())
    assert "group_inventory        1" in out or "group_inventory 1" in " ".join(out.split())
    # tiny_bids: every subject-session has a DWI series -> one diffusion job each
    assert "dwi 4" in " ".join(out.split()) and "anat 4" in " ".join(out.split())
    # sub-02/ses-m03 has no BOLD -> one fMRI job for each of the other three
    assert "func 3" in " ".join(out.split())


def test_dry_run_runs_only_the_diffusion_stage_for_a_session_without_t1w(make_bids, tmp_path):
    """sub-01/ses-m03 has a DWI series but no T1w: inventory, dwi and report jobs only."""
    bids = make_bids(omit={("01", "m03"): ["T1w", "FLAIR", "bold", "lesion"]})
    res = _snakemake("-n", "--config", f"bids_dir={bids}", f"output_dir={tmp_path / 'out'}",
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "inventory 4" in text and "dwi 4" in text and "report 4" in text
    assert "anat 3" in text and "tract 3" in text and "func 3" in text
    assert "sub-01_ses-m03_volumes.tsv" not in text  # no structural job for it


def test_dry_run_honours_label_filters(tiny_bids, tmp_path):
    res = _snakemake("-n", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'o'}",
                     "participant_label=02", "session_label=m03", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "inventory 1" in text
    assert "sub-02_ses-m03_inventory.tsv" in text and "sub-01_" not in text


def test_first_reference_adds_one_reference_job_per_subject(tiny_bids, tmp_path):
    cfg = tmp_path / "first.yaml"
    cfg.write_text("anat:\n  anatomical_reference: first\n")
    res = _snakemake("-n", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'o'}",
                     f"msmri_config={cfg}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "anat_reference 2" in text and "sub-01_desc-subjectref_T1w.nii.gz" in text


def test_lint_is_clean(tiny_bids, tmp_path):
    res = _snakemake("--lint", "--config", f"bids_dir={tiny_bids}", f"output_dir={tmp_path / 'o'}",
                     cwd=tmp_path)
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
                     cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list(out.glob("sub-*/ses-*/*_inventory.tsv"))) == 4
    assert (out / "group/inventory.tsv").exists()
    assert (out / "logs/inventory/sub-01_ses-m00.log").exists()
    # every job leaves a resource record (wall seconds, peak memory) for benchmarks/bench_e2e.py
    record = (out / "logs/benchmarks/inventory/sub-01_ses-m00.tsv").read_text().splitlines()
    header, values = record[0].split("\t"), record[-1].split("\t")
    assert {"s", "max_rss"} <= set(header) and float(values[header.index("s")]) > 0
    assert (out / "logs/benchmarks/group_inventory/group.tsv").exists()


@pytest.mark.parametrize("mode", ["raw", "fmriprep"])
def test_func_job_waits_for_the_structural_job_only_with_raw_bold(mode, tiny_bids, tmp_path):
    """fMRIPrep BOLD is already in MNI space with its confounds: no structural job is planned."""
    cfg = tmp_path / "func.yaml"
    prep = tmp_path / "fmriprep"
    prep.mkdir()
    cfg.write_text(
        f"func:\n  input: {mode}\n  fmriprep_dir: {prep if mode == 'fmriprep' else 'null'}\n"
    )
    out = tmp_path / "o"
    target = out / "sub-01/ses-m00/func/sub-01_ses-m00_task-rest_desc-summary_bold.tsv"
    res = _snakemake("-n", str(target), "--config", f"bids_dir={tiny_bids}", f"output_dir={out}",
                     f"msmri_config={cfg}", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    text = " ".join((res.stdout + res.stderr).split())
    assert "func 1" in text and "inventory 1" in text
    assert ("anat 1" in text) == (mode == "raw"), text


def _inventory(out: Path, sub: str, ses: str) -> Path:
    return out / f"sub-{sub}/ses-{ses}/sub-{sub}_ses-{ses}_inventory.tsv"


@pytest.mark.integration
def test_a_broken_subject_fails_only_its_own_job_and_names_the_file(tiny_bids, tmp_path):
    bad = tiny_bids / "sub-02/ses-m00/anat/sub-02_ses-m00_T1w.nii.gz"
    bad.write_bytes(b"\x1f\x8b not an image")
    out = tmp_path / "out"
    res = _snakemake("--profile", str(LOCAL), "--cores", "2", "group_inventory",
                     "--config", f"bids_dir={tiny_bids}", f"output_dir={out}", cwd=tmp_path)
    assert res.returncode != 0  # the run as a whole failed ...
    for sub, ses in [("01", "m00"), ("01", "m03"), ("02", "m03")]:  # ... but --keep-going
        assert _inventory(out, sub, ses).exists(), res.stderr[-3000:]  # finished the others
    assert not _inventory(out, "02", "m00").exists()
    assert not (out / "group/inventory.tsv").exists()  # depends on the failed job
    log = (out / "logs/inventory/sub-02_ses-m00.log").read_text()
    assert str(bad) in log and "unreadable or truncated image" in log
    assert "sub-02_ses-m00.log" in res.stderr  # Snakemake points at the job log


@pytest.mark.integration
def test_rerun_incomplete_after_a_killed_run_gives_the_uninterrupted_outputs(tiny_bids, tmp_path):
    """Kill Snakemake and its job while a job runs, rerun, compare every output's checksum."""
    config = ["--config", f"bids_dir={tiny_bids}"]
    whole = tmp_path / "whole"
    res = _snakemake("--profile", str(LOCAL), "--cores", "2", "group_inventory", *config,
                     f"output_dir={whole}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    out = tmp_path / "killed"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--cores", "1", "group_inventory",
           *config, f"output_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    log, target = out / "logs/inventory/sub-01_ses-m03.log", _inventory(out, "01", "m03")
    deadline = time.monotonic() + 300
    while not (log.exists() and not target.exists()) and time.monotonic() < deadline:
        time.sleep(0.02)  # the job has started (its log exists) and not finished (no output)
    killed_mid_job = log.exists() and not target.exists()
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the running msmri job, no clean-up
    proc.wait()
    assert killed_mid_job, "the job finished before it could be killed"
    assert not (out / "group/inventory.tsv").exists()

    # What a user does after a crash: release the kill's stale lock, then rerun (the local
    # profile sets --rerun-incomplete, so the killed job is redone, not trusted).
    res = _snakemake("--unlock", *config, f"output_dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    res = _snakemake("--profile", str(LOCAL), "--cores", "2", "group_inventory", *config,
                     f"output_dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree_checksums(out) == tree_checksums(whole)


def test_building_the_dag_does_not_import_nipype(tiny_bids, tmp_path):
    """The Snakefile builds every path through workflows.outputs: a dry run (the whole DAG,
    group jobs included) must not import Nipype (seconds saved per Snakemake start)."""
    code = (
        "import sys\n"
        "from snakemake.cli import main\n"
        f"sys.argv = ['snakemake', '-n', '--cores', '1', '-s', {str(ROOT / 'Snakefile')!r}, "
        f"'--config', 'bids_dir={tiny_bids}', 'output_dir={tmp_path / 'out'}']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    status = exc.code\n"
        "print('EXIT', status, 'NIPYPE', 'nipype' in sys.modules)\n"
    )
    res = subprocess.run([str(BIN / "python"), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert "EXIT 0 NIPYPE False" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]

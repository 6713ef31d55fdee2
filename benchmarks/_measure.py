"""Wall time and peak memory of a child process tree, shared by the benchmarks.

``ru_maxrss`` only gives the largest single process; a Nipype MultiProc run or a
process pool holds several at once, so the tree's resident set (the parent plus
every descendant) is also sampled every 0.1 s with psutil. Sampling can miss a
spike shorter than the interval, so both figures are printed.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class ChildRun:
    wall_s: float
    peak_tree_mb: float  # sampled sum of RSS over the process tree
    peak_process_mb: float  # exact ru_maxrss of the largest finished child so far


def run_child(cmd: list[str], *, interval: float = 0.1, env: dict | None = None) -> ChildRun:
    """Run ``cmd`` to completion (raising on failure) and measure it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    parent = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            for p in [parent, *parent.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        except psutil.Error:
            pass
        peak = max(peak, total)
        time.sleep(interval)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return ChildRun(wall, peak / 2**20, single)


@dataclass(frozen=True)
class TrialSubject:
    """Subject 01 of the ``trial`` preset in a benchmark folder, run through ``msmri``."""

    root: Path
    nprocs: int

    @property
    def out(self) -> Path:
        return self.root / "derivatives"

    def command(self, session: str, stage: str) -> list[str]:
        msmri = str(Path(sys.executable).with_name("msmri"))
        return [msmri, str(self.root / "bids"), str(self.out), "participant",
                "--participant-label", "01", "--work-dir", str(self.root / "work"),
                "--nprocs", str(self.nprocs), "--session-label", session, "--stages", stage]

    def ensure(self, session: str, stage: str, done: Path) -> None:
        """Run ``stage`` untimed unless its output ``done`` exists (prerequisites)."""
        if not done.exists():
            subprocess.run(self.command(session, stage), check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def timed(self, session: str, stage: str, extra: tuple[str, ...] = ()) -> ChildRun:
        """Run ``stage`` (``extra`` CLI arguments appended) in a child process without
        Nipype's cached results, measured."""
        shutil.rmtree(self.root / "work" / f"sub-01_ses-{session}" / f"{stage}_wf",
                      ignore_errors=True)
        return run_child([*self.command(session, stage), *extra])


def trial_subject(keep: Path | None, prefix: str, nprocs: int) -> TrialSubject:
    """Write subject 01 of the trial preset into ``keep`` (or a new temporary folder) once."""
    from pipeline.phantom.trial import PRESETS
    from workflows.synth import write_trial

    root = keep or Path(tempfile.mkdtemp(prefix=prefix))
    if not (root / "bids/sub-01").exists():
        t0 = time.perf_counter()
        write_trial(root, PRESETS["trial"], subjects=[0])
        print(f"data: trial preset subject 01 written in {time.perf_counter() - t0:.1f} s -> {root}")
    return TrialSubject(root, nprocs)

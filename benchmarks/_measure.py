"""Wall time and peak memory of a child process tree, shared by the benchmarks.

``ru_maxrss`` only gives the largest single process; a Nipype MultiProc run or a
process pool holds several at once, so the tree's resident set (the parent plus
every descendant) is also sampled every 0.1 s with psutil. Sampling can miss a
spike shorter than the interval, so both figures are printed.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import time
from dataclasses import dataclass

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

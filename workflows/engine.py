"""Running Nipype workflows inside one Snakemake job (or one `msmri` call).

Snakemake decides which jobs run; inside a job Nipype runs the graph with the
job's threads (MultiProc), in a scratch working directory, and writes crash
files where the job log can point to them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["run_workflow"]

log = logging.getLogger("msmri.engine")

# Nipype checks online for new versions at import time unless told not to; this
# machine (and most clusters) has no internet.
os.environ.setdefault("NIPYPE_NO_ET", "1")


def run_workflow(wf, *, work_dir: Path, nprocs: int = 1) -> None:
    """Run a Nipype workflow; raise with the crash files named on failure."""
    from nipype import config as nipype_config

    work_dir = Path(work_dir)
    crash_dir = work_dir / "crash"
    crash_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "execution": {
            "crashdump_dir": str(crash_dir),
            "crashfile_format": "txt",
            "remove_unnecessary_outputs": False,
            "hash_method": "content",
            "stop_on_first_crash": True,
        },
        "monitoring": {"enabled": False},
    }
    nipype_config.update_config(settings)
    wf.config.update(settings)  # the workflow's own copy wins over the global one
    for node in wf._get_all_nodes():
        node.config = settings
    wf.base_dir = str(work_dir)
    plugin, args = ("Linear", {}) if nprocs <= 1 else ("MultiProc", {"n_procs": nprocs})
    before = set(crash_dir.iterdir())
    try:
        wf.run(plugin=plugin, plugin_args=args)
    except Exception as exc:
        crashes = sorted(set(crash_dir.iterdir()) - before)
        for crash in crashes:
            log.error("Nipype crash file %s:\n%s", crash, crash.read_text()[-4000:])
        names = ", ".join(str(c) for c in crashes) or "none written"
        raise RuntimeError(f"workflow {wf.name} failed (crash files: {names}): {exc}") from exc

"""SLURM submission for real: a one-node cluster on localhost runs the workflow through the
``slurm`` profile (snakemake-executor-plugin-slurm), and its outputs equal a local run's.

The module fixture starts a private munged (own key and socket), slurmctld and slurmd from
Debian's slurm-wlm, and stops them by their PIDs at the end. The executor plugin's job step
runs ``srun`` with every ``SLURM_*`` variable but the job's identity removed, so ``SLURM_CONF``
cannot point at a private file: the fixture writes ``/etc/slurm/slurm.conf`` (only if no
configuration is there, marked as written by this test) and removes it afterwards.
Needs root (slurmd) and the Debian packages; CI installs them (``.ci/run``).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_snakemake, tree_checksums

pytestmark = pytest.mark.integration

SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARK = "# written by msmri tests/test_slurm.py; removed when the test ends"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def _unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where the cluster must be tested."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"SLURM test cannot run in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_conf(root: Path, node: str) -> str:
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"""{MARK}
ClusterName=msmritest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb // 2} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _wait_for(check, what: str, logs: list[Path], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    raise RuntimeError(f"{what} within {timeout:.0f} s\n{tails}")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        _unavailable("slurmd must run as root")
    if SLURM_CONF.exists() and MARK not in SLURM_CONF.read_text():
        _unavailable(f"{SLURM_CONF} exists: a real SLURM installation is configured here")
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o755)
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    node = socket.gethostname().split(".")[0]
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_slurm_conf(root, node))
    daemons: list[subprocess.Popen] = []
    logs = [
        root / f"{name}.{ext}"
        for name in ("munged", "slurmctld", "slurmd")
        for ext in ("log", "out")
    ]
    try:
        munge = [f"--socket={root}/munge.socket", f"--key-file={key}", f"--pid-file={root}/munged.pid",
                 f"--log-file={logs[0]}", f"--seed-file={root}/munged.seed"]
        for cmd in (["munged", "--foreground", "--force", *munge],
                    ["slurmctld", "-D", "-i", "-f", str(SLURM_CONF)],
                    ["slurmd", "-D", "-N", node, "-f", str(SLURM_CONF)]):
            with (root / f"{cmd[0]}.out").open("w") as console:
                daemons.append(subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT))
            if cmd[0] == "munged":
                _wait_for((root / "munge.socket").exists, "munged did not create its socket", logs)

        def idle() -> bool:
            res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            return res.stdout.strip() == "idle"

        _wait_for(idle, "the SLURM node did not become idle", logs)
        yield {"root": root, "node": node}
    finally:
        for proc in reversed(daemons):  # stop exactly the daemons started here, by PID
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if SLURM_CONF.exists() and MARK in SLURM_CONF.read_text():
            SLURM_CONF.unlink()


def _jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows (finished jobs stay for MinJobAge), by job id."""
    res = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True)
    jobs = {}
    for line in res.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


def _target(target: str, out: Path) -> str:
    return str(out / target) if "/" in target else target


def _run_both(slurm_cluster, tmp_path: Path, target: str, config: list[str], n_jobs: int):
    """Run ``target`` with the local profile, then through the cluster; check the SLURM side.

    ``target`` is a rule name or a file path relative to the output folder. Returns the
    local and the SLURM output folders.
    """
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    res = run_snakemake("--profile", str(REPO / "configs/profiles/local"), "--cores", "2",
                        _target(target, local), *config, f"output_dir={local}",
                        cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    before = set(_jobs())
    run_dir = tmp_path / "submit"
    run_dir.mkdir()
    res = run_snakemake("--profile", str(REPO / "configs/profiles/slurm"),
                        "--slurm-init-seconds-before-status-checks", "1",  # test speed only
                        _target(target, cluster), *config, f"output_dir={cluster}",
                        cwd=run_dir, timeout=900)
    root = slurm_cluster["root"]
    assert res.returncode == 0, res.stderr[-4000:] + (root / "slurmctld.log").read_text()[-2000:]

    # Every rule's job was a SLURM batch job that completed on the cluster's node ...
    new = {k: v for k, v in _jobs().items() if k not in before}
    logs = sorted((cluster / "logs").rglob("*.log"))
    assert len(logs) == n_jobs, [str(p) for p in logs]
    ran_in = {}
    for log in logs:
        found = re.search(r"running in SLURM job (\d+) on (\S+)", log.read_text())
        assert found, f"{log} was not written inside a SLURM job"
        ran_in[str(log.relative_to(cluster))] = found.group(1)  # stages share file names
        assert found.group(2) == slurm_cluster["node"]
    assert len(set(ran_in.values())) == n_jobs, ran_in
    for job in ran_in.values():
        assert new[job]["JobState"] == "COMPLETED", new[job]
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", res.stdout + res.stderr)
    assert sorted(submitted) == sorted(ran_in.values())
    # ... and the plugin kept each job's SLURM log (slurm-keep-successful-logs in the profile).
    assert len(list((run_dir / "logs/slurm").rglob("*.log"))) == n_jobs
    return local, cluster


def test_workflow_runs_as_slurm_jobs_and_matches_a_local_run(slurm_cluster, tiny_bids, tmp_path):
    config = ["--config", f"bids_dir={tiny_bids}"]
    # 4 inventory jobs + the group inventory
    local, cluster = _run_both(slurm_cluster, tmp_path, "group_inventory", config, n_jobs=5)
    assert tree_checksums(cluster) == tree_checksums(local)  # byte for byte


def test_a_nipype_stage_runs_as_a_slurm_job_with_the_local_outputs(slurm_cluster, tmp_path):
    """The structural stage (Nipype workflow: registration, segmentation, lesions, figures) of
    one tiny-phantom session through the cluster gives the local run's files, byte for byte."""
    from pipeline.phantom.trial import PRESETS
    from workflows.synth import write_trial

    spec = PRESETS["tiny"]
    write_trial(tmp_path / "data", spec, subjects=[0])
    ses = spec.sessions[0]
    target = f"sub-01/ses-{ses}/anat/sub-01_ses-{ses}_volumes.tsv"
    config = ["--config", f"bids_dir={tmp_path / 'data/bids'}"]
    local, cluster = _run_both(slurm_cluster, tmp_path, target, config, n_jobs=2)  # inventory, anat
    assert (cluster / target).is_file()
    sums = tree_checksums(cluster)
    assert sums == tree_checksums(local)
    assert sum(k.endswith(".nii.gz") for k in sums) >= 10 and any(k.endswith(".svg") for k in sums)

"""launch/: each script's dry-run prints what every node runs, and a real start runs just that.

The scripts run under bash with nothing but the variables a test gives them and
a PATH holding stand-ins for deepspeed, torchrun, srun, scontrol and hostname
that print what they were given, so no cluster is needed and no real scontrol
on the test machine can answer in their place.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
RECIPE = "recipes/smoke/stage1.yaml"
BASH = shutil.which("bash")

# Each stand-in prints its name and arguments as the dry-runs do (bash's %q quoting).
ECHO = 'printf -v line " %q" "$@"; echo "{name}$line"\n'
STAND_INS = {
    "deepspeed": ECHO.format(name="deepspeed"),
    "torchrun": ECHO.format(name="torchrun"),
    "hostname": '[[ ${1:-} == -s ]] && echo "${FAKE_HOST%%.*}" || echo "$FAKE_HOST"\n',
    # The allocation it reports is n1, n2: not what a dry-run would expand the node list to.
    "scontrol": 'case $1 in show) printf "%s\\n" n1 n2 ;; requeue) echo "requeue $2" >>"$REQUEUE_LOG" ;; esac\n',
    # Records its options, then runs its command once per node with that node's SLURM_NODEID.
    "srun": (
        'echo "$*" >"$SRUN_LOG"\n'
        "while [[ $1 != --nodes ]]; do shift; done; nodes=$2\n"
        "while [[ $1 != bash ]]; do shift; done\n"
        'if [[ -n ${SRUN_SLEEP:-} ]]; then : >"$SRUN_LOG.started"; exec sleep "$SRUN_SLEEP"; fi\n'
        'for (( i = 0; i < nodes; i++ )); do SLURM_NODEID=$i "$@"; done\n'
    ),
}


def install(bin_dir: Path, name: str) -> None:
    (bin_dir / name).write_text(f"#!{BASH}\n{STAND_INS[name]}")
    (bin_dir / name).chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path) -> Path:
    """A PATH directory: the stand-ins but scontrol (tests that want it add it), bash and sleep."""
    d = tmp_path / "bin"
    d.mkdir()
    for name in STAND_INS.keys() - {"scontrol"}:
        install(d, name)
    for tool in ("bash", "sleep"):
        (d / tool).symlink_to(shutil.which(tool))
    return d


def run(script: str, *args: str, bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BASH, str(LAUNCH / script), *args],
        cwd=REPO,
        env={"PATH": str(bin_dir), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def per_node(stdout: str) -> list[tuple[str, list[str]]]:
    """'host: command' lines, as (host, argv)."""
    rows = []
    for line in stdout.splitlines():
        who, command = line.split(": ", 1)
        rows.append((who, shlex.split(command)))
    return rows


def value(argv: list[str], option: str) -> str:
    return argv[argv.index(option) + 1]


def entry(argv: list[str]) -> list[str]:
    """What the launcher starts on every rank: the module and its arguments."""
    return argv[argv.index("unimodal.train") - 1 :]


def test_scripts_are_executable_and_strict():
    for script in ("deepspeed.sh", "torchrun.sh", "slurm.sh"):
        path = LAUNCH / script
        assert path.stat().st_mode & stat.S_IXUSR, f"{script}: chmod +x"
        assert "\nset -euo pipefail\n" in path.read_text()


def test_deepspeed_dry_run_prints_every_host(bin_dir):
    out = run(
        "deepspeed.sh",
        "--dry-run",
        "launch/hostfile.example",
        RECIPE,
        "--set",
        "train.steps=1000",
        bin_dir=bin_dir,
        GPUS_PER_NODE="4",
    )
    assert out.returncode == 0, out.stderr
    rows = per_node(out.stdout)
    assert [host for host, _ in rows] == ["node01", "node02"]
    for rank, (_, argv) in enumerate(rows):
        assert argv[0] == "deepspeed" and "--no_ssh" in argv
        assert value(argv, "--hostfile") == "launch/hostfile.example"
        assert value(argv, "--node_rank") == str(rank)
        assert value(argv, "--master_addr") == "node01"
        assert value(argv, "--master_port") == "29500"
        assert value(argv, "--num_gpus") == "4"
        assert entry(argv) == ["--module", "unimodal.train", RECIPE, "--set", "train.steps=1000"]


def test_deepspeed_takes_slots_from_the_hostfile_and_the_master_from_the_environment(bin_dir):
    out = run(
        "deepspeed.sh",
        "launch/hostfile.example",
        RECIPE,
        "--resume",
        bin_dir=bin_dir,
        DRY_RUN="1",
        MASTER_ADDR="10.0.0.1",
        MASTER_PORT="6000",
    )
    assert out.returncode == 0, out.stderr
    for _, argv in per_node(out.stdout):
        assert "--num_gpus" not in argv
        assert (value(argv, "--master_addr"), value(argv, "--master_port")) == ("10.0.0.1", "6000")
        assert argv[-1] == "--resume"


def test_deepspeed_runs_what_the_dry_run_printed_for_this_host(bin_dir):
    dry = dict(per_node(run("deepspeed.sh", "--dry-run", "launch/hostfile.example", RECIPE, bin_dir=bin_dir).stdout))
    by_name = run("deepspeed.sh", "launch/hostfile.example", RECIPE, bin_dir=bin_dir, FAKE_HOST="node02.cluster")
    assert by_name.returncode == 0, by_name.stderr
    assert shlex.split(by_name.stdout) == dry["node02"]
    by_rank = run("deepspeed.sh", "launch/hostfile.example", RECIPE, bin_dir=bin_dir, FAKE_HOST="x", NODE_RANK="0")
    assert shlex.split(by_rank.stdout) == dry["node01"]


def test_deepspeed_refuses_a_host_not_in_the_hostfile(bin_dir):
    out = run("deepspeed.sh", "launch/hostfile.example", RECIPE, bin_dir=bin_dir, FAKE_HOST="login1")
    assert out.returncode == 2 and out.stdout == ""
    assert "login1 is not in launch/hostfile.example: set NODE_RANK" in out.stderr


def test_torchrun_dry_run_is_one_command_for_every_node(bin_dir):
    out = run("torchrun.sh", "--dry-run", RECIPE, bin_dir=bin_dir, NNODES="2", MASTER_ADDR="node01", GPUS_PER_NODE="8")
    assert out.returncode == 0, out.stderr
    [(who, argv)] = per_node(out.stdout)
    assert who == "each of 2 nodes"
    assert argv[0] == "torchrun"
    assert value(argv, "--nnodes") == "2"
    assert value(argv, "--nproc-per-node") == "8"
    assert value(argv, "--rdzv-backend") == "c10d"
    assert value(argv, "--rdzv-endpoint") == "node01:29500"
    assert "--node-rank" not in argv  # the rendezvous numbers the nodes
    assert entry(argv) == ["-m", "unimodal.train", RECIPE]

    real = run("torchrun.sh", RECIPE, bin_dir=bin_dir, NNODES="2", MASTER_ADDR="node01", GPUS_PER_NODE="8")
    assert real.returncode == 0, real.stderr
    assert shlex.split(real.stdout) == argv


def test_torchrun_needs_the_rendezvous_host_for_several_nodes(bin_dir):
    out = run("torchrun.sh", "--dry-run", RECIPE, bin_dir=bin_dir, NNODES="2")
    assert out.returncode != 0 and out.stdout == ""
    assert "set MASTER_ADDR" in out.stderr
    single = per_node(run("torchrun.sh", "--dry-run", RECIPE, bin_dir=bin_dir).stdout)
    assert value(single[0][1], "--rdzv-endpoint") == "localhost:29500"
    assert value(single[0][1], "--nproc-per-node") == "gpu"


SLURM = {"SLURM_JOB_NODELIST": "node[01-02]", "SLURM_NNODES": "2", "SLURM_GPUS_ON_NODE": "8"}


@pytest.mark.parametrize("restarts", ["0", "1"])
def test_slurm_dry_run_prints_each_node_and_resumes_a_requeued_job(bin_dir, restarts):
    out = run(
        "slurm.sh",
        "--dry-run",
        RECIPE,
        "--set",
        "train.steps=1000",
        bin_dir=bin_dir,
        SLURM_RESTART_COUNT=restarts,
        **SLURM,
    )
    assert out.returncode == 0, out.stderr
    rows = per_node(out.stdout)
    assert [host for host, _ in rows] == ["node01", "node02"]
    resume = ["--resume"] if restarts == "1" else []
    for rank, (_, argv) in enumerate(rows):
        assert argv[0] == "torchrun"
        assert value(argv, "--node-rank") == str(rank)
        assert value(argv, "--nnodes") == "2"
        assert value(argv, "--nproc-per-node") == "8"
        assert value(argv, "--master-addr") == "node01"
        assert value(argv, "--master-port") == "29500"
        assert entry(argv) == ["-m", "unimodal.train", RECIPE, "--set", "train.steps=1000", *resume]


def test_slurm_adds_resume_once(bin_dir):
    out = run("slurm.sh", RECIPE, "--resume", bin_dir=bin_dir, DRY_RUN="1", SLURM_RESTART_COUNT="2", **SLURM)
    for _, argv in per_node(out.stdout):
        assert argv.count("--resume") == 1


def test_slurm_expands_node_lists_without_scontrol(bin_dir):
    out = run("slurm.sh", "--dry-run", RECIPE, bin_dir=bin_dir, SLURM_JOB_NODELIST="gpu[08-10,12],login1,a[9-10]")
    assert out.returncode == 0, out.stderr
    rows = per_node(out.stdout)
    assert [host for host, _ in rows] == ["gpu08", "gpu09", "gpu10", "gpu12", "login1", "a9", "a10"]
    assert {value(argv, "--master-addr") for _, argv in rows} == {"gpu08"}
    assert {value(argv, "--nnodes") for _, argv in rows} == {"7"}
    assert value(rows[0][1], "--nproc-per-node") == "gpu"  # no SLURM_GPUS_ON_NODE: one rank per visible GPU

    nested = run("slurm.sh", "--dry-run", RECIPE, bin_dir=bin_dir, SLURM_JOB_NODELIST="rack[1-2]-n[1-4]")
    assert nested.returncode != 0 and nested.stdout == ""
    assert "cannot expand the node list 'rack[1-2]-n[1-4]' without scontrol" in nested.stderr


def test_slurm_needs_a_node_list(bin_dir):
    out = run("slurm.sh", "--dry-run", RECIPE, bin_dir=bin_dir)
    assert out.returncode != 0 and "SLURM_JOB_NODELIST" in out.stderr


def test_slurm_starts_one_torchrun_per_node_as_the_dry_run_printed(bin_dir, tmp_path):
    dry = per_node(run("slurm.sh", "--dry-run", RECIPE, bin_dir=bin_dir, **SLURM).stdout)
    install(bin_dir, "scontrol")
    srun_log = tmp_path / "srun.log"
    env = {**SLURM, "SLURM_JOB_ID": "42", "SLURM_CPUS_ON_NODE": "96", "SRUN_LOG": str(srun_log)}
    real = run("slurm.sh", RECIPE, bin_dir=bin_dir, **env)
    assert real.returncode == 0, real.stderr
    # the hosts came from scontrol (n1, n2), which moves only the master address
    expected = [[a.replace("node01", "n1") for a in argv] for _, argv in dry]
    assert [shlex.split(line) for line in real.stdout.splitlines()] == expected
    srun = shlex.split(srun_log.read_text())
    assert (value(srun, "--nodes"), value(srun, "--ntasks-per-node"), value(srun, "--cpus-per-task")) == (
        "2",
        "1",
        "96",
    )
    assert "--kill-on-bad-exit=1" in srun


def test_slurm_requeues_itself_on_usr1(bin_dir, tmp_path):
    install(bin_dir, "scontrol")
    srun_log, requeue_log = tmp_path / "srun.log", tmp_path / "requeue.log"
    env = {
        "PATH": str(bin_dir),
        **SLURM,
        "SLURM_JOB_ID": "42",
        "SLURM_CPUS_ON_NODE": "96",
        "SRUN_LOG": str(srun_log),
        "SRUN_SLEEP": "60",
        "REQUEUE_LOG": str(requeue_log),
    }
    with open(tmp_path / "out", "w") as out:
        job = subprocess.Popen(
            [BASH, str(LAUNCH / "slurm.sh"), RECIPE],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        started = Path(f"{srun_log}.started")
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), (tmp_path / "out").read_text()
        time.sleep(0.2)  # into `wait`
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends the batch shell
        assert job.wait(timeout=20) == 128 + signal.SIGUSR1  # the trap cut the wait short
        assert requeue_log.read_text() == "requeue 42\n"
        assert "requeueing job 42" in (tmp_path / "out").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)  # the sleeping srun stand-in, in the job's own session

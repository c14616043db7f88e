"""One writer per output directory: OUTPUT_DIR/run.lock.

The lock names its holder: the host, the process that owns the job on that
host (the launcher: `unimodal train`, torchrun's agent or DeepSpeed's, which
outlive a rank restarted under them), the SLURM job id if any, and when it was
taken. `unimodal train`/`curriculum` take it before any rank starts, and rank 0
takes it again before it writes anything (the only check a torchrun or SLURM
launch gets). A lock held by the same job (the same host and launcher, or the
same SLURM job, requeued) is the run's own; one held by another live run is
refused with a message naming it. A stale one, whose process is gone on this
host, or which has not been refreshed for `train.stale_lock_s` on another host,
is taken over with a warning. While a run holds its lock, a thread refreshes
the file's modification time, so a run on another host can tell a live holder
from a dead one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from unimodal.config import RecipeError

LOCK = "run.lock"


class OutputDirLocked(RecipeError):
    """Another live run writes this output directory."""


def this_job(launcher_pid: int) -> dict:
    return {
        "host": socket.gethostname(),
        "pid": launcher_pid,
        "job": os.environ.get("SLURM_JOB_ID", ""),
        "started": time.time(),
    }


def same_job(a: dict, b: dict) -> bool:
    if a["job"] and a["job"] == b["job"]:
        return True  # a SLURM job requeued, on whichever nodes
    return a["host"] == b["host"] and a["pid"] == b["pid"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def describe(holder: dict) -> str:
    job = f", SLURM job {holder['job']}" if holder["job"] else ""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
    return f"pid {holder['pid']} on {holder['host']}{job}, since {started}"


def stale_reason(holder: dict, age_s: float, stale_after_s: float) -> str | None:
    """Why `holder`'s lock is stale, or None while its run may be alive."""
    if holder["host"] == socket.gethostname():
        return None if alive(holder["pid"]) else "its process is gone"
    if age_s > stale_after_s:
        return f"not refreshed for {age_s:.0f} s, over train.stale_lock_s={stale_after_s:g}"
    return None


def _read(path: Path) -> tuple[dict, float] | None:
    try:
        return json.loads(path.read_text()), time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except ValueError:  # written by a run killed mid-write: nobody holds it
        return {"host": "", "pid": 0, "job": "", "started": 0.0}, float("inf")


def acquire(out_dir: Path, stale_after_s: float, launcher_pid: int) -> None:
    """Take `out_dir`'s lock for the job whose launcher is `launcher_pid`; refuse another live run's."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK
    me = this_job(launcher_pid)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # atomic: of two runs starting at once, one wins
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        return
    holder, age = _read(path) or (me, 0.0)
    if same_job(holder, me):
        return
    reason = stale_reason(holder, age, stale_after_s)
    if reason is None:
        raise OutputDirLocked(
            f"{out_dir} is being written by another run ({describe(holder)}; lock {path}): "
            "wait for it, stop it, or set train.output_dir to another directory"
        )
    print(f"[unimodal] warning: taking over {path}, left by {describe(holder)}: {reason}", flush=True)
    tmp = path.with_name(f".{LOCK}.{os.getpid()}")
    tmp.write_text(json.dumps(me))
    os.replace(tmp, path)


def release(out_dir: Path, launcher_pid: int) -> None:
    """Remove `out_dir`'s lock if this job holds it."""
    path = out_dir / LOCK
    found = _read(path)
    if found and same_job(found[0], this_job(launcher_pid)):
        path.unlink(missing_ok=True)


def keep_fresh(out_dir: Path, stale_after_s: float) -> None:
    """Refresh the lock's modification time every quarter of `stale_after_s`, from a daemon thread."""
    path = out_dir / LOCK

    def beat() -> None:
        while True:
            time.sleep(stale_after_s / 4)
            try:
                os.utime(path)
            except FileNotFoundError:
                return

    threading.Thread(target=beat, name="unimodal-lock", daemon=True).start()

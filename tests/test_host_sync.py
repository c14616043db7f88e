"""The training step does not wait on the device between logging steps, except for the guard's one decision.

A real single-rank run (gloo, in a fresh process) with every Tensor method
that reads a device value back to the host patched to note where it was
called from: `item`, `tolist`, `__bool__`, `__int__`, `__float__`, `cpu`.
On a CPU those calls cost nothing, but the same code on a GPU would stall
its queue of kernels at each. Host-side work (FLOPs and token counts from
the loader's host tensors) goes through numpy, which a device tensor
refuses, so it cannot hide a sync. What remains per micro-batch is the
guard's read of its two flags (unimodal/train/guard.py); DeepSpeed's own
per-step reads (its gradient-norm overflow check, the optimiser's step
counter) are DeepSpeed's, listed but not ours to remove.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import traceback
from collections import Counter

import torch
from conftest import SMOKE

from unimodal.train.launch import free_port

READS = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu")
STEPS, EVERY = 6, 3


def owner(stack: list[traceback.FrameSummary]) -> str:
    """Who asked for the value: the guard, DeepSpeed (or the optimiser it drives), or a place in unimodal."""
    if any(f.filename.endswith("unimodal/train/guard.py") and f.name == "skip" for f in stack):
        return "guard"
    ours = [f for f in stack if "/unimodal/" in f.filename and "/site-packages/" not in f.filename]
    inner = next((f for f in reversed(stack) if "/site-packages/" in f.filename and "/torch/" not in f.filename), None)
    if ours and (inner is None or stack.index(ours[-1]) > stack.index(inner)):
        return f"{ours[-1].filename.split('/unimodal/')[-1]}:{ours[-1].lineno}"
    return "deepspeed" if inner is not None and "/deepspeed/" in inner.filename else "other"


def count_reads(workspace, out, port: int) -> None:
    """In a fresh process: train the smoke stage, noting each read's step and owner; results to `out`.json."""
    import torch.distributed as dist

    from unimodal.recipe import load_recipe
    from unimodal.train.loop import train
    from unimodal.train.metrics import MetricsLogger

    os.chdir(workspace)
    os.environ.update(
        DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0"
    )
    torch.set_num_threads(1)
    step, reads = [0], []

    def noting(name):
        method = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            reads.append((step[0], name, owner(traceback.extract_stack()[:-1])))
            return method(self, *args, **kwargs)

        return read

    advance = MetricsLogger.advance

    def counting_advance(self):
        step[0] += 1
        advance(self)

    MetricsLogger.advance = counting_advance
    sets = [
        f"train.steps={STEPS}",
        f"logging.every={EVERY}",
        "train.checkpoint_every=1000",
        "data.workers=1",
        "logging.wandb.mode=disabled",
        f"train.output_dir={out}",
    ]
    recipe = load_recipe(SMOKE / "stage1.yaml", sets)
    for name in READS:
        setattr(torch.Tensor, name, noting(name))
    train(recipe, resume=False)
    out.with_suffix(".json").write_text(json.dumps(reads))
    dist.destroy_process_group()


def test_no_host_sync_between_logging_steps(workspace, tmp_path):
    out = tmp_path / "run"
    child = multiprocessing.get_context("spawn").Process(target=count_reads, args=(workspace, out, free_port()))
    child.start()
    child.join(timeout=300)
    assert child.exitcode == 0
    reads = json.loads(out.with_suffix(".json").read_text())
    # reads noted as k: after step k's end, through step k + 1; quiet: k logged nothing (k = 0 also starts the run)
    quiet = {k for k in range(1, STEPS) if k % EVERY}
    per_owner = Counter(who for k, _, who in reads if k in quiet)
    ours = {who: n for who, n in per_owner.items() if who not in ("guard", "deepspeed")}
    assert not ours, f"host syncs in the step between logging steps: {ours}"
    guard = Counter(name for k, name, who in reads if k in quiet and who == "guard")
    assert guard == {"cpu": len(quiet), "tolist": len(quiet)}  # one read-back of the two flags per micro-batch
    # the logging steps do read: the window's sums once a record
    logged = Counter(who for k, _, who in reads if k and k % EVERY == 0 and who.startswith("train/window.py"))
    assert logged, "a logging step reads its window back"

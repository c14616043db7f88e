"""Per-rank entry point: `deepspeed --module unimodal.train RECIPE` (or torchrun, or srun).

The recipe is validated again here (launchers can be started by hand), the
stage is trained (resuming from its checkpoint if it has one, unless
`--fresh`), and the process exits through a barrier and an explicit
process-group teardown: gloo's own teardown at interpreter exit can abort a
run that finished its work. A collective that fails or waits past
`train.collective_timeout_s` (a peer hung or lost) ends the rank with status 1
and a message naming the collective and the step, so the launcher ends the job.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from types import TracebackType

import torch.distributed as dist

from unimodal.config import RecipeError
from unimodal.data.loader import TooManyBadSamples
from unimodal.recipe import load_recipe
from unimodal.train.checkpoint import CheckpointSaveFailed
from unimodal.train.guard import NonFiniteLoss
from unimodal.train.lock import release
from unimodal.train.loop import train

# Library deprecation notices that say nothing about the user's run.
warnings.filterwarnings("ignore", message=".*set_vital.*")
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")
warnings.filterwarnings("ignore", message=".*torch.distributed.nn.functional.all_gather is deprecated.*")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m unimodal.train", description=__doc__)
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    p.add_argument(
        "--resume", action="store_true", help="the default: continue from the stage's latest checkpoint, if any"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over; an earlier run in the output directory is renamed, not deleted",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # from the deepspeed launcher
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.set)
    except RecipeError as err:
        print(err, file=sys.stderr)
        os._exit(2)
    code = 0
    try:
        train(recipe, resume=not args.fresh)
        dist.barrier()
        if dist.get_rank() == 0:
            release(recipe.train.output_dir, os.getppid())
        dist.destroy_process_group()
    except RecipeError as err:  # the output directory refused, on every rank alike
        if dist.get_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        code = 2
    except CheckpointSaveFailed as err:
        print(f"error: rank {dist.get_rank()}: {err}", file=sys.stderr)
        code = 1
    except TooManyBadSamples as err:  # raised in a loader worker: its message carries the traceback
        print(f"error: {str(err).strip().splitlines()[-1].split('TooManyBadSamples: ')[-1]}", file=sys.stderr)
        code = 1
    except NonFiniteLoss as err:  # raised on every rank at once: they agree on it
        if dist.get_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        code = 1
    except Exception as err:  # gloo reports a lost or stopped peer as a RuntimeError
        failed = collective_failed(err, recipe.train.collective_timeout_s)
        if failed:
            print(f"error: rank {dist.get_rank()}: {failed}", file=sys.stderr)
        else:
            traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def collective_failed(err: Exception, timeout_s: float) -> str | None:
    """What failed, read off the traceback: the collective (torch.distributed's function) and the step it was
    in; None for an error outside a collective."""
    collective, step = None, None
    tb: TracebackType | None = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.endswith("distributed_c10d.py") and collective is None:
            collective = code.co_name
        if code is train.__code__:
            step = tb.tb_frame.f_locals.get("step")
        tb = tb.tb_next
    if collective is None:
        return None
    where = f"after step {step}" if step is not None else "while the stage was being set up"
    return (
        f"{collective} {where} failed or waited over train.collective_timeout_s={timeout_s:g} s "
        f"(a rank hung, stopped or died): {str(err).strip().splitlines()[0]}"
    )


if __name__ == "__main__":
    main()

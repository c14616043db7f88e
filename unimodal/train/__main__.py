"""Per-rank entry point: `deepspeed --module unimodal.train RECIPE` (or torchrun, or srun).

The recipe is validated again here (launchers can be started by hand), the
stage is trained, and the process exits through a barrier and an explicit
process-group teardown: gloo's own teardown at interpreter exit can abort a
run that finished its work.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

import torch.distributed as dist

from unimodal.config import RecipeError, load_recipe
from unimodal.data.loader import TooManyBadSamples
from unimodal.train.guard import NonFiniteLoss
from unimodal.train.loop import train


# Library deprecation notices that say nothing about the user's run.
warnings.filterwarnings("ignore", message=".*set_vital.*")
warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")
warnings.filterwarnings("ignore", message=".*torch.distributed.nn.functional.all_gather is deprecated.*")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m unimodal.train", description=__doc__)
    p.add_argument("recipe")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    p.add_argument("--resume", action="store_true", help="continue from the stage's latest checkpoint")
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
        train(recipe, args.resume)
        dist.barrier()
        dist.destroy_process_group()
    except TooManyBadSamples as err:  # raised in a loader worker: its message carries the traceback
        print(f"error: {str(err).strip().splitlines()[-1].split('TooManyBadSamples: ')[-1]}", file=sys.stderr)
        code = 1
    except NonFiniteLoss as err:  # raised on every rank at once: they agree on it
        if dist.get_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        code = 1
    except Exception:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()

"""Padding efficiency of packed batches against naive padding, on the demo mixture.

Efficiency = real tokens / tokens computed (encoder + decoder, padding
included), summed over the same number of loader batches from the smoke
stage-2 recipe (image, text, audio and video tasks mixed), once with
`data.pack_length` and once with one sample a row.

    python bench/packing.py [--batches 100] [--pack-length 512] [--batch-tokens 2048]

Last line: JSON with `padding_efficiency` and `naive_padding_efficiency`.
"""

from __future__ import annotations

import argparse
import json

from workspace import REPO, demo_workspace

from unimodal.data.loader import build_train_loader
from unimodal.recipe import load_recipe
from unimodal.tokenize.sequence import IGNORE_INDEX


def efficiency(recipe, batches: int) -> tuple[float, float]:
    """(real over computed tokens, mean samples per batch) over `batches` loader batches."""
    real = computed = samples = 0
    for batch, _ in zip(build_train_loader(recipe, 0, 1), range(batches)):
        real += int(batch["enc_mask"].sum() + (batch["dec_out"] != IGNORE_INDEX).sum())
        computed += batch["enc_mask"].numel() + batch["dec_out"].numel()
        samples += len(batch["dataset"])
    return real / computed, samples / batches


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--pack-length", type=int, default=512)
    p.add_argument("--batch-tokens", type=int, default=2048)
    args = p.parse_args()
    with demo_workspace():
        sets = ["data.workers=0", f"data.batch_tokens={args.batch_tokens}"]
        recipe = REPO / "recipes" / "smoke" / "stage2.yaml"
        packed, packed_n = efficiency(
            load_recipe(recipe, sets + [f"data.pack_length={args.pack_length}"]), args.batches
        )
        naive, naive_n = efficiency(load_recipe(recipe, sets + ["data.pack_length=null"]), args.batches)
    print(f"demo mixture (smoke stage 2), {args.batches} batches of <= {args.batch_tokens} tokens")
    print(f"  packed, rows of {args.pack_length}: efficiency {packed:.3f}, {packed_n:.1f} samples a batch")
    print(f"  naive padding:        efficiency {naive:.3f}, {naive_n:.1f} samples a batch")
    print(
        json.dumps(
            {
                "bench": "packing",
                "padding_efficiency": round(packed, 4),
                "naive_padding_efficiency": round(naive, 4),
                "pack_length": args.pack_length,
                "batch_tokens": args.batch_tokens,
                "samples_per_batch": round(packed_n, 2),
                "naive_samples_per_batch": round(naive_n, 2),
            }
        )
    )


if __name__ == "__main__":
    main()

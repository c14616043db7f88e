"""`unimodal plan`: what each stage will read, before a cluster is paid for.

Per stage and dataset: its size (index.json), its target mix (averaged over
the stage's steps, as a schedule or ramp moves it), the samples and tokens
each step takes from it, and the epochs of it that the stage's steps consume.

Samples per step are estimated by building batches as the loader does (the
real sampler and target mix, the loader's packer and token budget) out of
samples whose token lengths were measured: the first `probe` samples of each
dataset, decoded and tokenized with the recipe's tokenizer and taken in turn.
A loss-aware mix is planned at its prior: there are no losses yet.
`simulate` draws tasks from the real sampler's micro-batch sequences, as many a
micro-batch as it holds samples, spread over the stage's steps, without
decoding anything: the mix those draws achieve.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unimodal.config import Recipe, RecipeError, expand_shards
from unimodal.data.decode import BadSample, decode_example
from unimodal.data.mix.policies import MixPolicy, dataset_sizes
from unimodal.data.mix.sampler import STRIDE, cumulative, micro_sampler
from unimodal.data.packing import fill_batch
from unimodal.data.stream import BrokenShard, read_shard
from unimodal.recipe import load_recipe, read_yaml
from unimodal.tokenize.multimodal import MultimodalTokenizer

TARGET_POINTS = 10_000  # steps the target mix is averaged over, evenly spread over the stage


@dataclass(frozen=True)
class Lengths:
    """A measured sample's token counts: all the packer needs of its TokenSequence."""

    enc_len: int
    dec_len: int


def stage_recipes(path: str | Path, nproc: int, overrides: list[str] = ()) -> list[tuple[Path, Recipe]]:
    """A curriculum's stages (a file with `stages:`) or a single recipe, validated.

    A stage whose output directory holds a run of another recipe, which training
    would refuse to resume, is noted on stderr, not refused: planning a variant
    of a run is what `plan` is for.
    """
    from unimodal.train.curriculum import load_curriculum  # imports deepspeed: only when needed
    from unimodal.train.resume import should_resume

    path = Path(path)
    if "stages" in read_yaml(path):
        stages = [(s.path, s.recipe) for s in load_curriculum(path, nproc, overrides, fresh=True)[1]]
    else:
        stages = [(path, load_recipe(path, overrides))]
    for stage_path, recipe in stages:
        try:
            should_resume(recipe, str(stage_path))
        except RecipeError as err:
            print(f"note: training would refuse this: {err}", file=sys.stderr)
    return stages


def measure(recipe: Recipe, probe: int) -> list[list[Lengths]]:
    """Token lengths of the first `probe` decodable samples of each dataset."""
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    out = []
    for d, ds in enumerate(recipe.data.datasets):
        lengths: list[Lengths] = []
        for url in expand_shards(ds.shards):
            try:
                for raw in read_shard(url):
                    try:
                        seq = tokenizer(decode_example(raw, d, ds, recipe.tokenizer))
                    except BadSample:
                        continue
                    lengths.append(Lengths(seq.enc_len, seq.dec_len))
                    if len(lengths) == probe:
                        break
            except BrokenShard:
                pass
            if len(lengths) == probe:
                break
        if not lengths:
            raise RecipeError(f"data.datasets.{d} ({ds.name}): no decodable sample in {ds.shards}")
        out.append(lengths)
    return out


def spread(total: int, points: int) -> np.ndarray:
    """`points` steps evenly spread over [0, total)."""
    return np.arange(points) * total // points


def per_batch(
    recipe: Recipe, policy: MixPolicy, lengths: list[list[Lengths]], batches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Samples and tokens (encoder + decoder, no padding) per loader batch, per dataset."""
    n = len(lengths)
    sampler = micro_sampler(recipe.seed, 0)
    taken, pending = [0] * n, []
    samples, tokens = np.zeros(n), np.zeros(n)
    cum = None

    def next_item():
        if pending:
            return pending.pop(0)
        d = sampler.draw(cum)
        seq = lengths[d][taken[d] % len(lengths[d])]
        taken[d] += 1
        return d, None, seq

    for i, step in enumerate(spread(recipe.train.steps, batches)):
        cum, sampler.draws = cumulative(policy.target(int(step))), i * STRIDE
        _, items = fill_batch(next_item, pending, recipe.data.batch_tokens, recipe.data.pack_length)
        for d, _, seq in items:
            samples[d] += 1
            tokens[d] += seq.enc_len + seq.dec_len
    return samples / batches, tokens / batches


def simulate(recipe: Recipe, policy: MixPolicy, draws: int, per_micro: int) -> np.ndarray:
    """The mix that `draws` draws of the real sampler achieve, `per_micro` draws from each micro-batch's sequence."""
    sampler = micro_sampler(recipe.seed, 0)
    counts = np.zeros(len(recipe.data.datasets))
    last, cum = -1, None
    for i, step in enumerate(spread(recipe.train.steps, draws)):
        if step != last:
            last, cum = step, cumulative(policy.target(int(step)))
        sampler.draws = (i // per_micro) * STRIDE + i % per_micro
        counts[sampler.draw(cum)] += 1
    return counts / draws


def plan_stage(
    path: Path, recipe: Recipe, nproc: int, accumulation: int, probe: int, batches: int, draws: int
) -> dict[str, Any]:
    policy = MixPolicy(recipe)
    steps = recipe.train.steps
    target = np.mean([policy.target(int(s)) for s in spread(steps, min(steps, TARGET_POINTS))], axis=0)
    lengths = measure(recipe, probe)
    samples, tokens = per_batch(recipe, policy, lengths, batches)
    per_step = accumulation * nproc  # loader batches per optimiser step, all ranks
    achieved = simulate(recipe, policy, draws, max(1, round(samples.sum()))) if draws else None
    out = {}
    for d, (ds, size) in enumerate(zip(recipe.data.datasets, dataset_sizes(recipe))):
        row = {
            "target": float(target[d]),
            "size": size,
            "tokens_per_sample": float(np.mean([x.enc_len + x.dec_len for x in lengths[d]])),
            "samples_per_step": float(samples[d] * per_step),
            "tokens": float(tokens[d] * per_step * steps),
            "epochs": float(samples[d] * per_step * steps / size) if size else None,
        }
        if achieved is not None:
            row["achieved"] = float(achieved[d])
        out[ds.name] = row
    return {
        "name": recipe.name,
        "recipe": str(path),
        "strategy": recipe.data.sampling.strategy,
        "steps": steps,
        "ranks": nproc,
        "accumulation": accumulation,
        "samples_per_step": float(samples.sum() * per_step),
        "datasets": out,
    }


def plan(
    path: str | Path, nproc: int, overrides: list[str] = (), draws: int = 0, probe: int = 16, batches: int = 200
) -> dict[str, Any]:
    """{"stages": [{"name", "datasets": {name: {"target", "achieved" (if draws), "epochs", ...}}, ...}]}."""
    from unimodal.train.engine import deepspeed_config  # imports deepspeed: only when needed

    stages = []
    for stage_path, recipe in stage_recipes(path, nproc, overrides):
        accumulation = int(deepspeed_config(recipe)["gradient_accumulation_steps"])
        stages.append(plan_stage(stage_path, recipe, nproc, accumulation, probe, batches, draws))
    return {
        "stages": stages,
        "estimate": (
            f"samples per step from {batches} batches built by the loader's sampler and packer out of "
            f"the measured token lengths of the first {probe} samples of each dataset, "
            "x gradient accumulation x ranks; a loss-aware mix is planned at its prior"
        ),
    }


def format_plan(report: dict[str, Any]) -> str:
    lines = []
    for st in report["stages"]:
        lines.append(
            f"{st['name']} ({st['recipe']}): {st['steps']} steps x {st['accumulation']} micro-batches x {st['ranks']} ranks, "
            f"{st['strategy']} mix, ~{st['samples_per_step']:.1f} samples per step"
        )
        simulated = any("achieved" in r for r in st["datasets"].values())
        head = (
            ["dataset", "size", "target"]
            + (["achieved"] if simulated else [])
            + ["samples/step", "tokens/sample", "epochs", "tokens"]
        )
        rows = [head]
        for name, r in st["datasets"].items():
            rows.append(
                [name, "?" if r["size"] is None else str(r["size"]), f"{r['target']:.4f}"]
                + ([f"{r['achieved']:.4f}"] if simulated else [])
                + [
                    f"{r['samples_per_step']:.2f}",
                    f"{r['tokens_per_sample']:.1f}",
                    "?" if r["epochs"] is None else f"{r['epochs']:.2f}",
                    _si(r["tokens"]),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        for row in rows:
            lines.append(
                "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            )
        lines.append("")
    lines.append(f"estimates: {report['estimate']}")
    if any(r["size"] is None for st in report["stages"] for r in st["datasets"].values()):
        lines.append("size ?: no index.json beside the shards, so no epochs")
    return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"

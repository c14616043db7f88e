"""One curriculum stage on this rank: the training loop, read top to bottom.

Launched once per rank by `deepspeed`, `torchrun` or SLURM (see
`unimodal.train.__main__`). `train` builds the model, engine and loader;
resumes; loops; finishes. Each step pulls a ready batch from the loader,
runs DeepSpeed's forward/backward/step, and every `logging.every` steps
all-reduces the window's sums so rank 0 can log global numbers. Before each
backward pass the ranks agree whether to skip the batch (a non-finite loss)
and whether a stop signal came (unimodal/train/guard.py); a stopped run saves
a checkpoint and returns None. The trainer's stateful parts (loader position,
data counts, balancer, metrics window, random state) are handed by name to the
`Checkpointer` (unimodal/train/state.py), which saves them with the engine in
every checkpoint: a resumed run logs, on CPU, exactly the uninterrupted run's losses.
The ledger of consumed samples (unimodal/data/ledger.py) is the data position
that outlives a change of topology (unimodal/train/elastic.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from unimodal.config import Recipe
from unimodal.data.ledger import SampleLedger
from unimodal.data.loader import build_train_loader
from unimodal.data.mix.balancer import Balancer
from unimodal.model import UnifiedModel, count_parameters
from unimodal.model.distill import DistillPlan
from unimodal.model.flops import batch_train_flops
from unimodal.model.pretrained import save_tasks, save_weights
from unimodal.model.transformer import compiled_graphs
from unimodal.objectives.contrastive import CONTRASTIVE
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.train.checkpoint import DONE, full_state_dict, remove_partial
from unimodal.train.comm import all_reduce_sum, init_distributed
from unimodal.train.elastic import agree_reshape, topology, unchanged
from unimodal.train.engine import build_engine, model_config
from unimodal.train.feed import DeviceFeed
from unimodal.train.freeze import freeze_all_but
from unimodal.train.guard import StepGuard
from unimodal.train.memory import peak_memory_mib
from unimodal.train.metrics import MetricsLogger
from unimodal.train.mfu import peak_flops
from unimodal.train.resume import agree
from unimodal.train.rng import RNGState
from unimodal.train.sample_log import SampleLog
from unimodal.train.start import check_start, describe, init_weights, layout, load_optimizer_state
from unimodal.train.state import Checkpointer
from unimodal.train.validate import Validator
from unimodal.train.window import DataCounts, Window


def train(recipe: Recipe, resume: bool = True) -> dict | None:
    """Train one stage; returns the final record (also written to `done.json`), or None if stopped by a signal.

    It resumes from the stage's checkpoint if its output directory holds one
    (unimodal/train/resume.py); `resume=False` starts over, the earlier run moved aside.
    """
    # build
    guard = StepGuard(recipe.name, recipe.train.max_nonfinite_steps)  # first: a stop signal must not kill the rank
    init_distributed(recipe.train.collective_timeout_s)
    rank, world = dist.get_rank(), dist.get_world_size()
    resuming = agree(recipe, resume)  # then everything comes from the stage's own checkpoint
    out_dir = recipe.train.output_dir
    ckpt_dir = out_dir / "checkpoints"
    # on another world size, ZeRO stage or worker count: the accumulation that keeps the global batch, the
    # checkpoint converted to DeepSpeed's universal format if ZeRO's partitions changed (unimodal/train/elastic.py)
    reshape = agree_reshape(recipe, world, ckpt_dir) if resuming else unchanged(recipe)
    run = reshape.apply(recipe)  # the recipe as this topology trains it
    names = [d.name for d in recipe.data.datasets]

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets)
    cfg = model_config(recipe, tokenizer.vocab_size, tokenizer.patch_dims)
    model = UnifiedModel(cfg)
    model.gather_pairs = any(ds.objective == CONTRASTIVE for ds in recipe.data.datasets)
    model.distill = DistillPlan.of(recipe.data.datasets)
    if recipe.init_from and not resuming:
        check_start(recipe, world, recipe.name)
        init_weights(model, cfg, Path(recipe.init_from))
    n_params = count_parameters(model)  # before ZeRO-3 partitions the parameters
    n_trainable = freeze_all_but(model, recipe.train.trainable)
    engine = build_engine(run, model)
    if recipe.carry == "optimizer" and not resuming:
        load_optimizer_state(engine, Path(recipe.init_from))
    dtype = next(engine.module.parameters()).dtype
    device = torch.device(engine.device)
    loader = build_train_loader(
        recipe, rank, world, engine.gradient_accumulation_steps(), guard.stopping, pin_memory=device.type == "cuda"
    )
    feed = DeviceFeed(device, dtype)
    peak, peak_source = peak_flops(device, dtype)
    validator = Validator(recipe, engine, cfg, feed) if recipe.train.eval_every else None

    # resume: the engine and the step first, then each stateful part in its turn
    checkpoints = Checkpointer(engine, ckpt_dir, recipe.train.keep_checkpoints, topology(run, world, reshape.asked))
    step, guard.skipped = checkpoints.load(reshape.universal, reshape.reshard) if resuming else (0, 0)
    counts, ledger = DataCounts(recipe), SampleLedger(recipe.data.datasets)
    balancer = Balancer(recipe, loader.dataset.board, step, all_reduce_sum, device)
    if rank == 0:
        remove_partial(ckpt_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
        print(
            f"[unimodal] {recipe.name}: {n_params / 1e6:.2f}M parameters "
            f"({n_trainable:,} trainable, {n_trainable / n_params:.2%}), "
            f"world size {world}, ZeRO stage {engine.zero_optimization_stage()}, "
            f"{f'resuming at step {step}' if resuming else 'from step 0, ' + describe(recipe)}; MFU against {peak_source}",
            flush=True,
        )
        if reshape.note:
            print(f"[unimodal] {recipe.name}: {reshape.note}", flush=True)
    logger = MetricsLogger(recipe, step, enabled=rank == 0)
    sample_log = SampleLog(out_dir, rank, world, step, recipe.logging.sample_log)
    window = Window(len(names), device)
    parts = {"loader": loader, "data": counts, "ledger": ledger, "balance": balancer, "window": window}
    checkpoints.track(parts | {"rng": RNGState()})
    # the workers' positions and the mixes in force: before they start
    checkpoints.restore("loader", "data", "ledger", "balance")
    if reshape.reshard:  # no saved position fits these workers: they go on after the samples consumed
        loader.dataset.start_at(step, ledger)
    batches = iter(loader)  # draws the workers' seeds from torch's generator: before its state is restored
    checkpoints.restore("window", "rng")

    # loop: batch, forward, guard, backward, step; log; checkpoint
    started, start_step = time.perf_counter(), step
    tokens_per_s = []
    while step < recipe.train.steps and not guard.stop:
        trained = 0
        while trained < engine.gradient_accumulation_steps():
            t0 = time.perf_counter()
            host = next(batches)
            meta = host.pop("meta")
            counts.add(meta)
            ledger.add(meta)
            batch = feed(host)
            wait = time.perf_counter() - t0
            out = engine(batch)
            skip = guard.skip(out["loss"], step + 1)
            sample_log.add(step + 1, meta, trained=not skip)
            if skip:
                continue
            engine.backward(out["loss"])
            engine.step()
            window.add(out, batch, host, wait, batch_train_flops(cfg, host))
            balancer.add(batch["dataset"], out["sample_loss"])
            trained += 1
        step += 1
        balancer.step(step)
        logger.advance()
        if step % recipe.logging.every == 0 or step == recipe.train.steps:
            record = window.record(step, engine.get_lr()[0], names, world, peak) | counts.record()
            record |= balancer.record(record)
            record["peak_memory_mib"] = peak_memory_mib(device)[0]  # rank 0's, the logging rank
            record["skipped_nonfinite"] = guard.skipped
            if cfg.compile:  # torch.compile's graphs so far: flat once the batch shapes stop recompiling
                record["compiled_graphs"] = compiled_graphs()
            tokens_per_s.append(record["tokens_per_s"])
            logger.log(record)
        if validator and step % recipe.train.eval_every == 0:  # before the checkpoint: a resume redoes what follows it
            logger.log(validator(step))
        if step % recipe.train.checkpoint_every == 0 or step == recipe.train.steps or guard.stop:
            sample_log.flush()
            checkpoints.save(step, guard.skipped)

    # finish: stopped by a signal, or the weights and done.json for the next stage
    done = None
    if step < recipe.train.steps:
        if rank == 0:
            print(
                f"[unimodal] {recipe.name}: stopped by a signal at step {step}, checkpoint saved; "
                "run it again to go on",
                flush=True,
            )
    else:
        state = full_state_dict(engine)
        done = {
            "stage": recipe.name,
            "steps": step,
            **layout(run, world),  # world_size, zero_stage, precision: what carry: optimizer must match
            "tokens_per_s": sum(tokens_per_s) / max(1, len(tokens_per_s)),
            "seconds": time.perf_counter() - started,
            "steps_this_run": step - start_step,
            "parameters": n_params,
            "trainable_parameters": n_trainable,
        }
        done["peak_memory_mib"], done["peak_memory_of"] = peak_memory_mib(device)
        if rank == 0:
            save_tasks(out_dir, recipe.data.datasets, recipe.plugins)
            save_weights(out_dir, state, cfg)
            (out_dir / DONE).write_text(json.dumps(done, indent=2))
    logger.close()
    sample_log.close()
    return done

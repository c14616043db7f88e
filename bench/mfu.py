"""Model FLOPs utilisation of a training step on one GPU: `base` preset, bf16, DeepSpeed.

The batch is a realistic mix at UnIVAL-like input sizes: images 224x224 in
16x16 patches (196 tokens), 10 s of audio as 128-bin log-mel in 16x16 patches
(496 tokens), 16-frame 224x224 clips in 2x16x16 tubelets (1,568 tokens), and
text of 32-128 tokens; prompts of a few tokens; targets of 8-32 tokens. Samples
are drawn until the token budget is full and packed into rows by the same
code the loader uses. MFU = model FLOPs of the real tokens (unimodal/model/flops.py)
per second over the device's dense bf16 peak (unimodal/train/mfu.py).

    python bench/mfu.py                                  # on a GPU
    python bench/mfu.py --attention sdpa flex varlen --compile off on   # each combination
    python bench/mfu.py --device cpu --preset tiny --steps 3 --warmup 1 --batch-tokens 4096   # smoke

`--attention` and `--compile` take several values: each combination is
measured (`model.attention`, `model.compile`; flex has no backward on CPU,
so there it is reported as skipped). The first compiled step is a warmup step.

Last line: JSON with `mfu`, `device`, tokens/s (the first combination's),
and `runs`: attention, compile, mfu and tokens/s of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unimodal.data.packing import RowPacker  # noqa: E402
from unimodal.model import ModelConfig, UnifiedModel  # noqa: E402
from unimodal.model.flops import batch_train_flops  # noqa: E402
from unimodal.model.transformer import attention_kind, compiled_graphs  # noqa: E402
from unimodal.tokenize.sequence import Segment, TokenSequence, collate_rows  # noqa: E402
from unimodal.train.mfu import peak_flops  # noqa: E402

PATCH_DIMS = {"image": 3 * 16 * 16, "audio": 16 * 16, "video": 2 * 3 * 16 * 16}
INPUT_TOKENS = {"image": 196, "audio": 496, "video": 1568}
MIX = {"image": 0.4, "audio": 0.2, "video": 0.1, "text": 0.3}  # by sample
VOCAB = 32000


def random_sample(rng: np.random.Generator, modality: str) -> TokenSequence:
    prompt = Segment("text", torch.randint(4, VOCAB, (int(rng.integers(3, 8)),)))
    if modality == "text":
        inputs = Segment("text", torch.randint(4, VOCAB, (int(rng.integers(32, 129)),)))
    else:
        inputs = Segment(modality, torch.randn(INPUT_TOKENS[modality], PATCH_DIMS[modality]))
    target = torch.randint(4, VOCAB, (int(rng.integers(8, 33)),))
    return TokenSequence([prompt, inputs], target, list(MIX).index(modality))


def mixed_batch(rng: np.random.Generator, budget: int, pack_length: int | None) -> dict[str, torch.Tensor]:
    packer = RowPacker(pack_length)
    while True:
        seq = random_sample(rng, str(rng.choice(list(MIX), p=list(MIX.values()))))
        if packer.rows and packer.tokens_with(seq) > budget:
            return collate_rows(packer.rows, PATCH_DIMS, 2, packer.enc_length)
        packer.add(seq)


def measure(args, attention: str, compiled: bool) -> dict:
    """Train `args.steps` steps of one model; MFU and tokens/s after `args.warmup` steps."""
    import deepspeed

    cfg = ModelConfig.from_preset(
        args.preset,
        VOCAB,
        PATCH_DIMS,
        max_positions=2048,
        activation_checkpointing=args.activation_checkpointing,
        attention=attention,
        compile=compiled,
    )
    torch.manual_seed(0)
    model = UnifiedModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 1},
        "steps_per_print": 1 << 30,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)
    device = torch.device(engine.device)
    rng = np.random.default_rng(0)
    batches = [mixed_batch(rng, args.batch_tokens, args.pack_length or None) for _ in range(args.steps)]
    peak, source = peak_flops(device, torch.bfloat16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    flops = tokens = 0
    for i, batch in enumerate(batches):
        if i == args.warmup:
            sync()
            start = time.perf_counter()
        on_device = {k: v.to(device, dtype=torch.bfloat16 if v.is_floating_point() else None) for k, v in batch.items()}
        out = engine(on_device)
        engine.backward(out["loss"])
        engine.step()
        if i >= args.warmup:
            flops += batch_train_flops(cfg, batch)
            tokens += int(batch["enc_mask"].sum() + (batch["dec_out"] != -100).sum())
    sync()
    seconds = time.perf_counter() - start
    mfu = flops / seconds / peak if peak else None
    kind = attention_kind(cfg, device)
    print(
        f"  attention {attention} ({kind}), compile {'on' if compiled else 'off'}: {tokens / seconds:,.0f} real tokens/s, "
        f"{flops / seconds / 1e12:.2f} TFLOP/s, MFU {mfu:.3f} ({source})"
        + (f", {compiled_graphs()} graphs compiled so far" if compiled else "")
    )
    return {
        "attention": attention,
        "kind": kind,
        "compile": compiled,
        "mfu": mfu,
        "tokens_per_s": tokens / seconds,
        "tflops_per_s": flops / seconds / 1e12,
        "peak_source": source,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-tokens", type=int, default=32768)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--pack-length", type=int, default=2048, help="encoder tokens per packed row (0: padded batches)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "flex", "sdpa", "varlen"])
    p.add_argument("--compile", nargs="+", default=["off"], choices=["off", "on"])
    args = p.parse_args()

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29650")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if args.device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.init_distributed()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.preset}: bf16, batches of <= {args.batch_tokens} tokens, {name}")
    runs = []
    for attention in args.attention:
        for compiled in args.compile:
            if device.type == "cpu" and attention == "flex":
                print("  attention flex: skipped, FlexAttention has no backward on CPU")
                runs.append(
                    {
                        "attention": attention,
                        "compile": compiled == "on",
                        "mfu": None,
                        "skipped": "no flex backward on cpu",
                    }
                )
                continue
            runs.append(measure(args, attention, compiled == "on"))
    first = next(r for r in runs if r["mfu"] is not None)
    print(
        json.dumps(
            {
                "bench": "mfu",
                "device": name,
                "preset": args.preset,
                "mfu": first["mfu"],
                "tokens_per_s": first["tokens_per_s"],
                "tflops_per_s": first["tflops_per_s"],
                "peak_source": first["peak_source"],
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()

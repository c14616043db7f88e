"""model.attention: flex (FlexAttention, block masks) and varlen (per-sample buckets) compute what sdpa
(the dense-mask reference) does.

For every objective, on padded rows, packed rows (with all-padding rows
besides), two-view rows, OS-MD rows (hallucination tokens, the teacher's
decoder pass) and without a decoder: the same losses and the same encoder
states at every real token, and for varlen every parameter's gradient. On
CPU, FlexAttention runs forward only (it has no backward there, torch 2.14)
and compiles each static shape (about 20 s on 2 cores): every batch here is
padded to one shape, so its three kernels (encoder self-attention, decoder
causal self-attention, cross-attention) compile once, into the inductor
cache that tests/conftest.py keeps under ~/.cache (warm on reruns). On a GPU
flex's gradients are compared too. Last, model.compile: compiled 2-rank
ZeRO-2 and ZeRO-3 runs log an uncompiled one's losses.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SMOKE, unimodal
from test_objectives import CONTRASTIVE, MLM, batch_of, build_recipe, datasets, sequences

from unimodal.config import DatasetConfig
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.distill import DistillPlan
from unimodal.model.transformer import attention_mask, block_mask, tile_occupancy
from unimodal.model.unified import view_ids
from unimodal.objectives import objectives
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import IGNORE_INDEX

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROWS, ENC, DEC = 4, 256, 16  # the one batch shape (tests/test_osmd.py's OS-MD batch too)
BLOCK = 32  # small tiles: samples of 7-160 tokens span several, and most tiles are skipped
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PATHS = ["flex", "varlen"]  # each against sdpa
PAD = {"enc_sample": -1, "dec_sample": -1, "dec_out": IGNORE_INDEX}  # collate_rows' padding; 0 or False elsewhere

OBJECTIVES = [o.name for o in objectives()]  # the built-ins, in registration order


def to_shape(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch padded to ROWS rows of ENC encoder and DEC decoder tokens (padding rows included)."""
    out = dict(batch)
    for key, v in batch.items():
        if key.startswith(("enc_", "dec_")) or key in ("modality", "positions"):
            length = DEC if key.startswith("dec_") else ENC
            out[key] = F.pad(v, (0, length - v.shape[1], 0, ROWS - v.shape[0]), value=PAD.get(key, 0))
    return out


def twins(cfg: ModelConfig, kind: str, distill=None) -> tuple[UnifiedModel, UnifiedModel]:
    """One model twice, the same weights: attention sdpa, and `kind`."""
    torch.manual_seed(0)
    sdpa = UnifiedModel(cfg.model_copy(update={"attention": "sdpa"}))
    other = UnifiedModel(cfg.model_copy(update={"attention": kind, "attention_block": BLOCK}))
    other.load_state_dict(sdpa.state_dict())
    for m in (sdpa, other):
        m.distill = distill
    return sdpa.to(DEVICE), other.to(DEVICE)


def assert_same_outputs(cfg: ModelConfig, batch: dict[str, torch.Tensor], kind: str, distill=None) -> None:
    """Losses and real tokens' encoder states agree; every gradient too where `kind` has a backward
    (varlen; flex on a GPU only)."""
    sdpa, other = twins(cfg, kind, distill)
    batch = {k: v.to(DEVICE) for k, v in to_shape(batch).items()}
    real = batch["enc_mask"]
    backward = kind == "varlen" or DEVICE.type == "cuda"
    with torch.set_grad_enabled(backward):
        outs = [m(batch) for m in (sdpa, other)]
    with torch.no_grad():
        states = [m.encode(batch)[0][real] for m in (sdpa, other)]
    for key in ("loss", "sample_loss", "n_tokens"):
        torch.testing.assert_close(outs[1][key], outs[0][key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(states[1], states[0], atol=1e-5, rtol=1e-5)
    if backward:
        for out in outs:
            out["loss"].backward()
        for (name, p), q in zip(sdpa.named_parameters(), other.parameters()):
            assert p.grad is not None and q.grad is not None, name
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def recipe(workspace):
    return build_recipe(workspace)


@pytest.fixture(scope="module")
def tokenizer(recipe) -> MultimodalTokenizer:
    return MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)


@pytest.fixture(scope="module")
def cfg(tokenizer) -> ModelConfig:
    return ModelConfig.from_preset("tiny", tokenizer.vocab_size, tokenizer.patch_dims)


@pytest.mark.parametrize("kind", PATHS)
@pytest.mark.parametrize("d", range(5), ids=OBJECTIVES)
@pytest.mark.parametrize("per_row", [1, 2], ids=["padded", "packed"])
def test_attention_path_equals_sdpa_for_every_objective(recipe, tokenizer, cfg, d, per_row, kind):
    """Two-view rows: contrastive and itm; packed: 2 rows of 2 samples and 2 padding rows."""
    assert_same_outputs(cfg, batch_of(tokenizer, sequences(recipe, tokenizer, d, 4), per_row), kind)


@pytest.mark.parametrize("kind", PATHS)
def test_attention_path_equals_sdpa_on_mixed_packed_rows_and_without_a_decoder(recipe, tokenizer, cfg, kind):
    seqs = [s for d in range(5) for s in sequences(recipe, tokenizer, d, 1)]  # every objective, 2 rows
    assert_same_outputs(cfg, batch_of(tokenizer, seqs, per_row=3), kind)
    mlm = batch_of(tokenizer, sequences(recipe, tokenizer, MLM, 4), per_row=2)
    assert_same_outputs(cfg.model_copy(update={"dec_layers": 0}), mlm, kind)


@pytest.mark.parametrize("kind", PATHS)
def test_attention_path_equals_sdpa_on_osmd_rows(workspace, cfg, kind):
    """Digit tones captioned with their word, the word a privileged input too: hallucination tokens in
    view 0, the word in view 1, the student's and the teacher's decoder passes (recipes/osmd's layout)."""
    recipe = build_recipe(workspace)
    tones = datasets(workspace)[CONTRASTIVE] | {"name": "osmd", "task": "osmd", "objective": "seq2seq"}
    distill = {"train": "joint", "tokens": 4, "weight": 1.0}
    recipe.data.datasets = [DatasetConfig(**tones, target="txt", privileged=["text"], distill=distill)]
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    batch = batch_of(tokenizer, sequences(recipe, tokenizer, 0, 4), per_row=2)
    assert batch["enc_masked"].sum() == 4 * 4 and (batch["enc_view"] == 1).any()
    assert_same_outputs(cfg, batch, kind, DistillPlan.of(recipe.data.datasets))


@pytest.fixture(scope="module")
def views(recipe, tokenizer) -> torch.Tensor:
    """View ids [ROWS, ENC] of two rows of three contrastive pairs and two padding rows."""
    return view_ids(to_shape(batch_of(tokenizer, sequences(recipe, tokenizer, CONTRASTIVE, 6), per_row=3)))


def test_block_mask_skips_the_tiles_no_sample_pair_shares(views):
    """The flex mask's tiles: computed where the dense mask has a pair of one sample, skipped elsewhere."""
    dense = attention_mask(views, views)[:, 0] & (views >= 0)[:, :, None]  # sdpa's, less the padding queries
    some, full = tile_occupancy(dense, BLOCK)
    mask = block_mask(views, views, causal=False, block=BLOCK)
    computed = mask.to_dense()[:, 0].bool()  # [B, tiles, tiles]: partial or full
    assert torch.equal(computed, some)
    assert torch.equal(mask.full_kv_num_blocks[:, 0], full.sum(-1, dtype=torch.int32))
    assert 0 < some.sum() < 0.25 * some.numel()  # two rows of three pairs, two of padding: most tiles skipped


def test_varlen_plan_buckets_each_view_alone_and_computes_exactly_the_pairs_it_needs(views):
    plan = attention_mask(views, views, kind="varlen")
    needed = attention_mask(views, views)[:, 0] & (views >= 0)[:, :, None]
    assert plan.pairs() == int(needed.sum())  # ratio 1.0: no pair of two views, none of padding
    flat = views.flatten()
    for queries, keys in zip(plan.queries, plan.keys):
        assert torch.equal(queries, keys)  # self-attention: a view's queries are its keys
        assert (flat[queries] == flat[queries[:, :1]]).all() and (queries.diff() > 0).all()  # one view, row order
        assert (queries // ENC == queries[:, :1] // ENC).all()  # one row
    held = torch.cat([q.flatten() for q in plan.queries])
    assert torch.equal(held.sort().values, (flat >= 0).nonzero().squeeze(1))  # every real token once, no padding
    assert len(plan.queries) < len(torch.unique(flat[flat >= 0]))  # views of one length share a bucket
    assert (plan.gather[flat < 0] == len(held)).all()  # padding reads the zero row


@pytest.mark.parametrize("zero", [2, 3])
def test_compiled_two_rank_run_with_checkpointing_has_the_uncompiled_losses(workspace, tiny_run, zero):
    """model.compile with activation checkpointing on 2 ranks, ZeRO-2 and ZeRO-3: tests/conftest.py's `tiny_run`
    (uncompiled, ZeRO-2), step for step (its first 4 steps: in the LR warmup, which does not depend on the
    stage's length). Under ZeRO-3 each block is one leaf for DeepSpeed's parameter hooks, which stay outside
    the compiled forward: without that, the hooks of every layer recompiled it past torch's limit (17 graphs,
    then eager)."""
    out = workspace / "runs" / f"tiny-compiled-zero{zero}"
    sets = [
        f"deepspeed.zero_optimization.stage={zero}",
        "train.steps=4",
        "train.checkpoint_every=2",
        "logging.every=1",
        "data.workers=0",
        f"train.output_dir={out}",
        "model.compile=true",
        "model.overrides={activation_checkpointing: true}",
    ]
    result = unimodal(
        "train", str(SMOKE / "stage1.yaml"), "--nproc", "2", *[a for s in sets for a in ("--set", s)], cwd=workspace
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    eager, compiled = (
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (tiny_run, out)
    )
    eager = eager[: len(compiled)]
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [1, 2, 3, 4]
    losses = [k for k in eager[0] if k.startswith("loss")]
    assert "loss" in losses and len(losses) > 1  # the total and each task's
    for a, b in zip(eager, compiled):
        assert b["lr"] == a["lr"], a["step"]
        for k in losses:
            assert b[k] == pytest.approx(a[k], rel=1e-4), (a["step"], k)
    graphs = [r["compiled_graphs"] for r in compiled]
    # one graph per kind of block (encoder, decoder), none rebuilt for ragged batches
    assert graphs == [2, 2, 2, 2], graphs

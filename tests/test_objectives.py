"""The objectives (seq2seq, mlm, mim, contrastive, itm) on the demo's real shards.

Each learns a fixed batch (itm's made here: tones and words the test chooses); mlm and mim read the encoder only at masked
positions; contrastive is InfoNCE over the batch, and over both ranks' pairs
when two gloo ranks gather them; mixed and packed batches keep every sample's
loss its own and reach every parameter; FLOPs and evaluation handle them all.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from itertools import islice

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import yaml
from conftest import SMOKE, unimodal
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from unimodal.config import Recipe, RecipeError, expand_shards
from unimodal.data.decode import decode_example
from unimodal.data.stream import eval_samples
from unimodal.demo.mixture import WORDS, digit_sound
from unimodal.modalities import modality_codes
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.flops import batch_train_flops, decoder_flops, view_lengths
from unimodal.objectives import objective_code, objectives
from unimodal.recipe import load_recipe, read_yaml
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.objectives import complete_rows
from unimodal.tokenize.sequence import TokenSequence, collate_rows
from unimodal.tokenize.text import BOS_ID
from unimodal.train.launch import free_port

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CAPTION, MLM, MIM, CONTRASTIVE, ITM = range(5)  # dataset indices in `recipe`, one per objective

OBJECTIVES = [o.name for o in objectives()]  # the built-ins, in registration order


def datasets(root) -> list[dict]:
    """One dataset per objective, in OBJECTIVES order: digit images and their captions, number
    words, and digit tones with their word as the pairs (a word is the clearest pair signal)."""

    def demo(kind: str) -> dict:
        base = f"{root}/data/demo"
        return dict(shards=f"{base}/train/{kind}-{{000000..000001}}.tar", eval_shards=f"{base}/test/{kind}-000000.tar")

    image, pair = {"image": "png"}, {"audio": "wav", "text": "txt"}
    return [
        dict(name="caption", task="caption", **demo("image"), inputs=image, target="txt"),
        dict(name="mlm", task="mlm", **demo("text"), inputs={"text": "txt"}, objective="mlm"),
        dict(name="mim", task="mim", **demo("image"), inputs=image, objective="mim"),
        dict(name="pairs", task="contrast", **demo("audio"), inputs=pair, objective="contrastive"),
        dict(name="match", task="match", **demo("audio"), inputs=pair, objective="itm"),
    ]


def build_recipe(root) -> Recipe:
    raw = read_yaml(SMOKE / "stage1.yaml")
    raw["tokenizer"]["text"] = f"{root}/runs/demo/tokenizer/sp.model"
    raw["data"]["datasets"] = datasets(root)
    return Recipe.model_validate(raw)


@pytest.fixture(scope="module")
def recipe(workspace) -> Recipe:
    return build_recipe(workspace)


@pytest.fixture(scope="module")
def tokenizer(recipe) -> MultimodalTokenizer:
    return MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)


def sequences(recipe: Recipe, tokenizer: MultimodalTokenizer, d: int, n: int) -> list[TokenSequence]:
    """The first n samples of dataset d's training shards, tokenized as the loader does."""
    ds = recipe.data.datasets[d]
    raws = islice(eval_samples(expand_shards(ds.shards)), n)
    return [tokenizer(decode_example(raw, d, ds, recipe.tokenizer)) for raw in raws]


def tone_word_pairs(
    recipe: Recipe, tokenizer: MultimodalTokenizer, digits: list[int], seed: int = 0
) -> list[TokenSequence]:
    """itm samples chosen here, not drawn from the shards: each digit's DTMF tone (the demo's, from a
    generator seeded `seed`) with its word, tokenized as the loader does."""
    rng, ds = np.random.default_rng(seed), recipe.data.datasets[ITM]
    raws = [
        {"__key__": f"pair-{i}", "wav": digit_sound(d, rng, speech=False)[0], "txt": WORDS[d].encode()}
        for i, d in enumerate(digits)
    ]
    return [tokenizer(decode_example(raw, ITM, ds, recipe.tokenizer)) for raw in raws]


def batch_of(tokenizer: MultimodalTokenizer, seqs: list[TokenSequence], per_row: int = 1) -> dict[str, torch.Tensor]:
    rows = [seqs[i : i + per_row] for i in range(0, len(seqs), per_row)]
    return collate_rows(complete_rows(rows), tokenizer.patch_dims, BOS_ID)


def new_model(tokenizer: MultimodalTokenizer) -> UnifiedModel:
    torch.manual_seed(0)
    return UnifiedModel(ModelConfig.from_preset("tiny", tokenizer.vocab_size, tokenizer.patch_dims))


def test_recipe_fields_name_the_mistake():
    def load(*sets: str) -> Recipe:
        return load_recipe(SMOKE / "stage1.yaml", [f"data.datasets.0.{s}" for s in sets], check_files=False)

    cases = [
        (["target=null"], "target: objective seq2seq needs the text field"),
        (["objective=mlm", "inputs={text: txt}"], "target: objective mlm has no decoder target"),
        (["objective=mlm", "target=null"], "inputs: objective mlm masks text tokens and needs a text input"),
        (["objective=mim", "target=null", "inputs={text: txt}"], "needs an image, audio or video input"),
        (["objective=contrastive", "target=null"], "inputs: objective contrastive pairs exactly two inputs, got 1"),
        (
            ["objective=contrastive", "target=null", "inputs={image: png, text: txt}", "prompt=compare"],
            "prompt: objective contrastive encodes its two inputs without a prompt",
        ),
        (
            ["objective=itm", "target=null", "inputs={image: png, text: txt}", "objective_options={mask_ratio: 0.3}"],
            "objective_options.mask_ratio: only for objectives mlm and mim, not itm",
        ),
        (
            ["objective=mim", "target=null", "objective_options={mask_ratio: 1.5}"],
            "data.datasets.0.objective_options.mask_ratio",
        ),
        (["objective=clip"], "data.datasets.0.objective"),
    ]
    for sets, words in cases:
        with pytest.raises(RecipeError, match=r"data.datasets.0") as err:
            load(*sets)
        assert words in str(err.value), (sets, str(err.value))
    mim = load("objective=mim", "target=null")
    assert mim.data.datasets[0].objective_options.mask_ratio == 0.6  # written out: the saved recipe shows it
    mlm = load("objective=mlm", "target=null", "inputs={text: txt}", "objective_options={mask_ratio: 0.25}")
    assert mlm.data.datasets[0].objective_options.mask_ratio == 0.25
    assert load().data.datasets[0].objective == "seq2seq"
    with pytest.raises(RecipeError, match=r"model.overrides.dec_layers: 0 leaves no decoder for the seq2seq datasets"):
        load_recipe(SMOKE / "stage1.yaml", ["model.overrides={dec_layers: 0}"], check_files=False)


@pytest.mark.parametrize("d", range(5), ids=OBJECTIVES)
def test_each_objective_learns_a_fixed_batch(recipe, tokenizer, d):
    # itm: digits 0-7, each sample matched with its word and mismatched with the next one's, so every
    # word is once in a matched and once in a mismatched view: only the pairing tells them apart
    seqs = tone_word_pairs(recipe, tokenizer, list(range(8))) if d == ITM else sequences(recipe, tokenizer, d, 8)
    batch = batch_of(tokenizer, seqs)
    assert (batch["objective"] == objective_code(recipe.data.datasets[d].objective)).all()
    if d == ITM:
        assert (view_lengths(batch) > 0).all()  # every sample's matched view and its mismatched one
    model = new_model(tokenizer)
    opt = torch.optim.AdamW(
        model.parameters(), lr=1e-3, weight_decay=0.0
    )  # higher, contrastive can collapse (loss log 8)
    losses = []
    for _ in range(30):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert all(math.isfinite(x) for x in losses)
    assert out["sample_loss"].shape == (8,) and (out["sample_loss"] > 0).all()
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("d", [MLM, MIM], ids=["mlm", "mim"])
def test_masked_objectives_read_only_masked_positions(recipe, tokenizer, d):
    batch = batch_of(tokenizer, sequences(recipe, tokenizer, d, 4))
    masked, modality = batch["enc_masked"], batch["modality"]
    kind = modality_codes()["text" if d == MLM else "image"]
    assert masked.any() and (modality[masked] == kind).all()
    model = new_model(tokenizer)
    loss = model(batch)["loss"]

    def with_encoder_output_moved(where: torch.Tensor) -> torch.Tensor:
        handle = model.encoder.register_forward_hook(lambda mod, args, out: out + 3.0 * where.unsqueeze(-1))
        try:
            return model(batch)["loss"]
        finally:
            handle.remove()

    # the loss reads the encoder at masked positions only
    torch.testing.assert_close(with_encoder_output_moved(batch["enc_mask"] & ~masked), loss, rtol=0, atol=0)
    assert with_encoder_output_moved(masked) != loss
    # what is masked never reaches the encoder, yet is what the loss scores
    changed = dict(batch)
    if d == MLM:
        changed["enc_ids"] = torch.where(masked, (batch["enc_ids"] + 7) % tokenizer.vocab_size, batch["enc_ids"])
    else:
        rows = masked[modality == kind]
        changed["patches_image"] = torch.where(rows.unsqueeze(-1), 255 - batch["patches_image"], batch["patches_image"])
    torch.testing.assert_close(model.encode(changed)[0], model.encode(batch)[0], rtol=0, atol=0)
    assert model(changed)["loss"] != loss


def test_masks_follow_the_sample_key_and_epoch(recipe, tokenizer):
    ds = recipe.data.datasets[MIM]
    ex = decode_example(next(eval_samples(expand_shards(ds.shards))), MIM, ds, recipe.tokenizer)
    mask = tokenizer(ex).segments[1].masked
    other_worker = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    assert torch.equal(other_worker(ex).segments[1].masked, mask)
    assert int(mask.sum()) == round(0.6 * len(mask))
    assert not torch.equal(tokenizer(replace(ex, epoch=1)).segments[1].masked, mask)


def test_contrastive_loss_is_infonce_over_the_batch(recipe, tokenizer):
    batch = batch_of(tokenizer, sequences(recipe, tokenizer, CONTRASTIVE, 6), per_row=3)  # packed: 3 pairs a row
    model = new_model(tokenizer)
    out = model(batch)
    with torch.no_grad():
        memory = model.encode(batch)[0]
        pooled = torch.stack(
            [
                torch.stack([memory[(batch["enc_sample"] == i) & (batch["enc_view"] == v)].mean(0) for v in (0, 1)])
                for i in range(6)
            ]
        )
        z = F.normalize(model.contrastive.proj(pooled), dim=-1)
        logits = model.contrastive.logit_scale.exp() * z[:, 0] @ z[:, 1].T
        truth = torch.arange(6)
        per_pair = (
            F.cross_entropy(logits, truth, reduction="none") + F.cross_entropy(logits.T, truth, reduction="none")
        ) / 2
    torch.testing.assert_close(out["sample_loss"], per_pair)
    torch.testing.assert_close(out["loss"], per_pair.mean())
    # the two views are encoded apart: the word does not reach the tone's states
    word = (batch["enc_view"] == 1) & (batch["modality"] == modality_codes()["text"])
    changed = dict(batch, enc_ids=torch.where(word, (batch["enc_ids"] + 7) % tokenizer.vocab_size, batch["enc_ids"]))
    tone = batch["enc_mask"] & (batch["enc_view"] == 0)
    assert tone.any() and word.any()
    torch.testing.assert_close(model.encode(changed)[0][tone], memory[tone], rtol=0, atol=0)


def test_itm_negatives_pair_each_tone_with_another_samples_word(recipe, tokenizer):
    seqs = sequences(recipe, tokenizer, ITM, 4)
    paired, again = ([row[0] for row in complete_rows([[s] for s in seqs])] for _ in range(2))
    words = [s.segments[1].data for s in seqs]
    for seq, pair, same in zip(seqs, paired, again):
        assert all(a is b for a, b in zip(pair.segments[:3], seq.segments[:3]))  # the matched view, and the tone again
        assert [s.view for s in pair.segments] == [0, 0, 1, 1]
        negative = pair.segments[-1].data
        assert torch.equal(negative, same.segments[-1].data)  # the batch decides
        assert not torch.equal(negative, seq.segments[1].data)
        assert any(torch.equal(negative, w[: len(negative)]) for w in words)
    alone = complete_rows([[seqs[0]]])[0][0]  # no other sample to pair with: the matched view only
    assert [s.view for s in alone.segments] == [0, 0]
    out = new_model(tokenizer)(batch_of(tokenizer, [seqs[0]]))
    assert torch.isfinite(out["loss"]) and out["sample_loss"][0] > 0


def test_mixed_batch_sums_objective_means_and_reaches_every_parameter(recipe, tokenizer):
    mlm, pairs = sequences(recipe, tokenizer, MLM, 3), sequences(recipe, tokenizer, CONTRASTIVE, 3)
    model = new_model(tokenizer)
    mixed = model(batch_of(tokenizer, mlm + pairs))
    alone = [model(batch_of(tokenizer, s)) for s in (mlm, pairs)]
    torch.testing.assert_close(mixed["loss"], alone[0]["loss"] + alone[1]["loss"])
    torch.testing.assert_close(mixed["sample_loss"], torch.cat([a["sample_loss"] for a in alone]))
    mixed["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for used in (model.contrastive.proj.weight, model.contrastive.logit_scale, model.mask_emb, model.tok_emb.weight):
        assert used.grad.abs().sum() > 0
    for unused in (model.itm.out.weight, model.mim.out["image"].weight, model.decoder.blocks[0].mlp.fc.weight):
        assert unused.grad.abs().sum() == 0  # in the graph, with an exact zero

    model.zero_grad()
    everything = model(batch_of(tokenizer, [s for d in range(5) for s in sequences(recipe, tokenizer, d, 2)]))
    everything["loss"].backward()
    for head in (model.itm.out, model.mim.out["image"], model.contrastive.proj, model.decoder.blocks[0].mlp.fc):
        assert head.weight.grad.abs().sum() > 0


def test_packed_rows_keep_masks_views_and_pools_per_sample(recipe, tokenizer):
    seqs = [s for d in range(5) for s in sequences(recipe, tokenizer, d, 2)]
    model = new_model(tokenizer)
    padded = model(batch_of(tokenizer, seqs))
    packed_batch = batch_of(tokenizer, seqs, per_row=5)
    assert packed_batch["enc_mask"].shape[0] == 2
    packed = model(packed_batch)
    torch.testing.assert_close(packed["sample_loss"], padded["sample_loss"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed["loss"], padded["loss"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("d, per_row", [(CAPTION, 1), (MLM, 2), (MIM, 2), (CONTRASTIVE, 2), (ITM, 2)], ids=OBJECTIVES)
def test_flops_formula_matches_counted_matmuls(recipe, tokenizer, d, per_row):
    batch = batch_of(tokenizer, sequences(recipe, tokenizer, d, per_row), per_row=per_row)  # one row: no padding
    assert (view_lengths(batch)[:, 1] > 0).all() == (d in (CONTRASTIVE, ITM))  # itm's negatives are all there
    model = new_model(tokenizer)
    cfg = model.cfg
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch)
    # computed but not useful, so not counted: attention across views (masked out) and,
    # in a batch without seq2seq samples, the decoder over one padding position
    length = batch["enc_mask"].shape[1]
    extra = cfg.enc_layers * 4 * cfg.d_model * (length**2 - int((view_lengths(batch) ** 2).sum()))
    extra += decoder_flops(cfg, 1, 1) if batch["dec_in"].shape[1] == 0 else 0
    assert counter.get_total_flops() == batch_train_flops(cfg, batch) // 3 + extra


def test_evaluation_reports_a_metric_per_objective(recipe, tokenizer):
    from unimodal.eval.harness import (
        evaluate,
    )  # here: spawned ranks import this module, and DeepSpeed is slow to import

    results = evaluate(recipe, new_model(tokenizer).eval(), batch_size=32)
    assert {n: list(r["metrics"]) for n, r in results.items()} == {
        "caption": ["exact_match"],
        "mlm": ["accuracy"],
        "pairs": ["recall@1"],
        "match": ["accuracy"],
    }  # mim has no held-out metric
    assert all(r["samples"] > 0 and 0.0 <= v <= 1.0 for r in results.values() for v in r["metrics"].values())


def contrastive_rank(rank: int, world: int, port: int, root: str, out_dir: str, pairs: int, steps: int) -> None:
    """One of `world` gloo ranks training on its contiguous share of the same contrastive pairs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    recipe = build_recipe(root)
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    share = pairs // world
    batch = batch_of(tokenizer, sequences(recipe, tokenizer, CONTRASTIVE, pairs)[rank * share : (rank + 1) * share])
    model = new_model(tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for step in range(steps):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        for p in model.parameters():  # what DDP and ZeRO do: average the gradients
            dist.all_reduce(p.grad)
            p.grad /= world
        if step == 0:
            first = {"sample_loss": out["sample_loss"], "grads": [p.grad.clone() for p in model.parameters()]}
        opt.step()
        losses.append(out["loss"].item())
    torch.save({**first, "losses": losses}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_gloo_ranks_gather_contrastive_negatives(workspace, recipe, tokenizer, tmp_path):
    """Each rank's pairs meet the other rank's as negatives: per-pair losses and averaged
    gradients equal one process's on all the pairs, and training goes on from there."""
    pairs, steps = 8, 8
    mp.spawn(contrastive_rank, args=(2, free_port(), str(workspace), str(tmp_path), pairs, steps), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    model = new_model(tokenizer)
    out = model(batch_of(tokenizer, sequences(recipe, tokenizer, CONTRASTIVE, pairs)))
    out["loss"].backward()
    torch.testing.assert_close(torch.cat([r["sample_loss"] for r in ranks]), out["sample_loss"])
    for (name, p), grad in zip(model.named_parameters(), ranks[0]["grads"]):
        torch.testing.assert_close(grad, p.grad, atol=1e-6, rtol=1e-4, msg=name)
    for r in ranks:
        assert r["losses"][-1] < 0.7 * r["losses"][0], r["losses"]


def test_two_rank_deepspeed_run_mixes_objectives(workspace):
    """`unimodal train` on 2 ranks (ZeRO-2, gloo): seq2seq, mlm and contrastive datasets in one
    stage; masks made in the loader workers, negatives gathered, each task's loss logged."""
    raw = read_yaml(SMOKE / "stage1.yaml")
    raw["data"]["datasets"] = [d for d in datasets(workspace) if d["name"] in ("caption", "mlm", "pairs")]
    recipe_path, out = workspace / "objectives.yaml", workspace / "runs" / "objectives"
    recipe_path.write_text(yaml.safe_dump(raw))
    sets = ["train.steps=4", "train.warmup_steps=0", "logging.every=1", f"train.output_dir={out}"]
    result = unimodal(
        "train", str(recipe_path), "--nproc", "2", *[a for s in sets for a in ("--set", s)], cwd=workspace
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for name in ("caption", "mlm", "pairs"):
        seen = [r[f"loss/{name}"] for r in recs if f"loss/{name}" in r]
        assert seen and all(math.isfinite(x) and x > 0 for x in seen), name
    assert all(0 < r["mfu"] < 1 for r in recs)

"""Contrastive adaptation (recipes/adapt): `train.trainable` freezes all but the adapter, the
optimiser sees only the adapter, the adapter is a few percent of the model and learns the
shifted domain's pairs while the frozen weights stay bit for bit what they were.
"""

from __future__ import annotations

import hashlib
import io
import json
from itertools import islice

import numpy as np
import pytest
import torch
from conftest import REPO, unimodal
from PIL import Image
from safetensors.torch import load_file

from unimodal.config import Recipe, RecipeError, expand_shards, modules
from unimodal.data.decode import decode_example
from unimodal.data.stream import eval_samples
from unimodal.demo.mixture import digit_scans
from unimodal.demo.shifted import write_shifted
from unimodal.model import UnifiedModel
from unimodal.model.pretrained import save_weights
from unimodal.objectives.contrastive import embed
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.objectives import complete_rows
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import BOS_ID
from unimodal.train.engine import model_config
from unimodal.train.freeze import freeze_all_but
from unimodal.train.launch import free_port

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ADAPT = REPO / "recipes" / "adapt"


@pytest.fixture(scope="module")
def shifted(workspace):
    """data/demo-shifted beside the workspace's demo data, at the workspace's scale."""
    write_shifted(workspace / "data" / "demo-shifted", scale=0.1)
    return workspace


def adapt_recipe(root, *sets: str) -> Recipe:
    return load_recipe(
        ADAPT / "adapt.yaml", [f"tokenizer.text={root}/runs/demo/tokenizer/sp.model", *sets], check_files=False
    )


def adapted_model(recipe: Recipe) -> tuple[UnifiedModel, MultimodalTokenizer]:
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    torch.manual_seed(0)
    return UnifiedModel(model_config(recipe, tokenizer.vocab_size, tokenizer.patch_dims)), tokenizer


def shifted_batch(root, recipe: Recipe, tokenizer: MultimodalTokenizer, n: int) -> dict[str, torch.Tensor]:
    ds = recipe.data.datasets[0]
    raws = islice(eval_samples(expand_shards(f"{root}/{ds.shards}")), n)
    seqs = [tokenizer(decode_example(raw, 0, ds, recipe.tokenizer)) for raw in raws]
    return collate_rows(complete_rows([[s] for s in seqs]), tokenizer.patch_dims, BOS_ID)


def test_shifted_scans_are_the_demos_split_inverted_and_written_the_same_each_time(tmp_path):
    counts = [write_shifted(tmp_path / name, scale=0.05) for name in ("a", "b")]
    assert counts[0] == counts[1] == {"train": 72, "test": 18}
    for tar in sorted((tmp_path / "a").rglob("*.tar")):
        assert tar.read_bytes() == (tmp_path / "b" / tar.relative_to(tmp_path / "a")).read_bytes(), tar
    scans = digit_scans(0)
    for split, n in counts[0].items():
        samples = list(eval_samples(sorted(str(t) for t in (tmp_path / "a" / split).glob("*.tar"))))
        assert [json.loads(s["json"])["label"] for s in samples] == scans[split][1][
            :n
        ].tolist()  # the demo's scans, in order
        light = [np.asarray(Image.open(io.BytesIO(s["png"]))).mean() for s in samples]
        assert min(light) > 128, split  # inverted: a light ground (the demo's is black)


def test_trainable_names_modules_and_the_adapter_must_exist(workspace):
    with pytest.raises(RecipeError, match=r"train\.trainable\.1") as err:
        adapt_recipe(workspace, "train.trainable=[adapter, encodr]")
    assert "encoder" in str(err.value)  # the known names are listed
    with pytest.raises(RecipeError, match=r"train.trainable: names adapter, but model.adapter is not set"):
        adapt_recipe(workspace, "model.adapter=null")
    with pytest.raises(RecipeError, match=r"model\.adapter\.dim"):
        adapt_recipe(workspace, "model.adapter={dim: 0}")


def test_modules_list_every_part_of_the_model(workspace):
    model, _ = adapted_model(adapt_recipe(workspace))
    parts = {n for n, m in model.named_children() if list(m.parameters())} | {
        n for n, _ in model.named_parameters(recurse=False)
    }
    assert parts - {"lm_head"} == set(modules())


def test_adapter_is_at_most_5_percent_and_alone_trains(workspace):
    model, _ = adapted_model(adapt_recipe(workspace))
    total = sum(p.numel() for p in model.parameters())
    trained = freeze_all_but(model, ["adapter"])
    assert trained == sum(p.numel() for p in model.adapter.parameters()) > 0
    assert trained / total <= 0.05, f"{trained} of {total}"
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if n.startswith("adapter.")
    ]
    assert freeze_all_but(model, None) == total  # absent: everything trains


def test_adapter_starts_as_the_frozen_model_then_learns_while_the_rest_stays_bit_identical(shifted):
    recipe = adapt_recipe(shifted)
    model, tokenizer = adapted_model(recipe)
    frozen, _ = adapted_model(adapt_recipe(shifted, "model.adapter=null", "train.trainable=null"))
    frozen.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("adapter.")})
    batch = shifted_batch(shifted, recipe, tokenizer, 16)
    torch.testing.assert_close(embed(model, batch), embed(frozen, batch), rtol=0, atol=0)  # identity at init

    freeze_all_but(model, recipe.train.trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("adapter.") for k in changed), sorted(changed)
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("adapter."))


def test_engine_gives_the_optimiser_the_adapter_alone(shifted, monkeypatch):
    import deepspeed  # here: slow to import
    import torch.distributed as dist

    from unimodal.train.engine import build_engine

    env = dict(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    deepspeed.init_distributed(dist_backend="gloo")
    try:
        for stage in (0, 2):
            recipe = adapt_recipe(shifted, f"deepspeed.zero_optimization.stage={stage}")
            model, _ = adapted_model(recipe)
            freeze_all_but(model, recipe.train.trainable)
            optimizer = build_engine(recipe, model).optimizer
            groups = (
                optimizer.bit16_groups if stage else [g["params"] for g in optimizer.param_groups]
            )  # ZeRO's, or AdamW's
            assert {id(p) for g in groups for p in g} == {id(p) for p in model.adapter.parameters()}, stage
    finally:
        dist.destroy_process_group()


def sha(path) -> dict[str, str]:
    return {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in load_file(str(path)).items()}


def test_adapt_recipe_trains_only_the_adapter_of_a_pretrained_run(shifted, tmp_path):
    pre, out = tmp_path / "pretrain", tmp_path / "heads"
    model, _ = adapted_model(adapt_recipe(shifted, "model.adapter=null", "train.trainable=null"))
    save_weights(
        pre, {k: v.clone() for k, v in model.state_dict().items()}, model.cfg
    )  # as a finished pretraining run leaves it
    sets = [
        "logging.wandb.mode=disabled",
        "data.workers=0",
        "train.steps=3",
        f"train.output_dir={out}",
        f"init_from={pre}",
    ]
    run = unimodal(
        "train", str(ADAPT / "adapt.yaml"), "--nproc", "1", *[a for s in sets for a in ("--set", s)], cwd=shifted
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    done = json.loads((out / "done.json").read_text())
    fraction = done["trainable_parameters"] / done["parameters"]
    assert f"({done['trainable_parameters']:,} trainable, {fraction:.2%})" in run.stdout and fraction <= 0.05
    assert done["zero_stage"] == 2 and done["peak_memory_mib"] > 0
    pretrained, adapted = sha(pre / "model.safetensors"), sha(out / "model.safetensors")
    assert {k: adapted[k] for k in pretrained} == pretrained  # frozen: bit-identical
    assert set(adapted) - set(pretrained) == {k for k in adapted if k.startswith("adapter.")} != set()

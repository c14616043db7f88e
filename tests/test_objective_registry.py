"""A new objective, defined and registered entirely here, through the registry's public API (unimodal/objectives/).

The toy objective predicts the mean of a sample's image patches from its
pooled encoder state, with its own head, loss, FLOPs, metric and eval scoring (predict, measure).
It is validated in a recipe's dataset, lays a sample out, trains through the
model (forward and backward on a tiny batch) and is scored; the registry
refuses a name twice and the recipe an unknown objective. The registry is
restored after each test, so the rest of the suite sees the built-ins only.
"""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from unimodal.config import DatasetConfig, TrainConfig, modules
from unimodal.eval.harness import score
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.model.flops import head_flops, view_lengths
from unimodal.objectives import Objective, objective_code, objectives, register_objective, registry
from unimodal.objectives.reading import pool_views, stem_input
from unimodal.tokenize.objectives import lay_out
from unimodal.tokenize.sequence import Segment, TokenSequence, collate

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

NAME = "patch_mean"
PATCH_DIMS = {"image": 12, "audio": 8, "video": 16}


def check(ds) -> None:
    if "image" not in ds.inputs:
        raise ValueError(f"inputs: objective {NAME} needs an image input")


def toy_lay_out(prompt, inputs, mask_ratio, seed):
    return [prompt, *inputs]


def items(model, batch):
    return (batch["objective"] == objective_code(NAME)).nonzero().squeeze(1)


def patch_means(model, batch) -> torch.Tensor:
    """The mean value of each sample's image patches [N]."""
    at = batch["modality"] == model.modalities.index("image")
    values = stem_input(batch["patches_image"], torch.float32).mean(-1)
    n = batch["dataset"].shape[0]
    sums = torch.zeros(n).index_add_(0, batch["enc_sample"][at], values)
    return sums / torch.zeros(n).index_add_(0, batch["enc_sample"][at], torch.ones_like(values)).clamp(min=1)


def predictions(model, batch, memory) -> torch.Tensor:
    return model.patch_mean(pool_views(memory, batch)[0][:, 0]).float().squeeze(-1)


def loss(model, batch, mine, memory, terms) -> None:
    terms.add(
        F.mse_loss(predictions(model, batch, memory)[mine], patch_means(model, batch)[mine], reduction="none"), mine
    )


def flops(cfg, batch, views, modalities) -> int:
    return 2 * cfg.d_model * int((batch["objective"].numpy() == objective_code(NAME)).sum())


def toy_predict(model, batch, refs, tokenizer, max_new_tokens) -> torch.Tensor:
    memory, _ = model.encode(batch)
    return (predictions(model, batch, memory) - patch_means(model, batch)).abs().cpu()


def toy_measure(errors, ds) -> dict[str, float]:
    return {"mean_abs_error": torch.cat(errors).mean().item()}


TOY = Objective(
    name=NAME,
    lay_out=toy_lay_out,
    check=check,
    metrics=("mean_abs_error",),
    default_metric="mean_abs_error",
    heads={NAME: lambda cfg: nn.Linear(cfg.d_model, 1)},
    items=items,
    loss=loss,
    flops=flops,
    predict=toy_predict,
    measure=toy_measure,
)


@pytest.fixture
def toy(monkeypatch):
    """The toy objective registered, for this test only."""
    monkeypatch.setattr(registry, "_OBJECTIVES", dict(registry._OBJECTIVES))
    monkeypatch.setattr(registry, "_CODES", dict(registry._CODES))
    return register_objective(TOY)


def dataset(**fields) -> DatasetConfig:
    return DatasetConfig(**({"name": "toy", "task": "mean", "shards": "toy.tar", "inputs": {"image": "png"}} | fields))


def toy_batch(n: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    seqs = []
    for i in range(n):
        prompt = Segment("text", torch.tensor([5, 6]))
        image = Segment("image", torch.randint(0, 256, (3 + i, PATCH_DIMS["image"]), generator=gen, dtype=torch.uint8))
        seqs.append(
            TokenSequence(lay_out(NAME, prompt, [image], None, seed=i), torch.zeros(0, dtype=torch.long), 0, NAME)
        )
    return collate(seqs, PATCH_DIMS, bos_id=2)


def test_the_toy_objective_validates_trains_and_is_scored(toy):
    ds = dataset(objective=NAME)
    assert ds.metrics == ["mean_abs_error"] and NAME in modules()
    assert TrainConfig(steps=1, output_dir="out", trainable=[NAME]).trainable == [NAME]
    with pytest.raises(ValidationError, match=f"inputs: objective {NAME} needs an image input"):
        dataset(objective=NAME, inputs={"text": "txt"})
    with pytest.raises(ValidationError, match=f"metrics: accuracy not for objective {NAME}"):
        dataset(objective=NAME, metrics=["accuracy"])

    batch = toy_batch(3)
    assert (batch["objective"] == len(objectives()) - 1).all()
    torch.manual_seed(0)
    model = UnifiedModel(ModelConfig.from_preset("tiny", 64, PATCH_DIMS, max_positions=64))
    out = model(batch)
    out["loss"].backward()
    assert (out["sample_loss"] > 0).all() and model.patch_mean.weight.grad.abs().sum() > 0
    cfg = model.cfg
    assert head_flops(cfg, batch, view_lengths(batch)) == 3 * 2 * cfg.d_model
    metrics = score(ds, model.eval(), [(batch, ())], tokenizer=None, max_new_tokens=1)
    assert list(metrics) == ["mean_abs_error"] and metrics["mean_abs_error"] >= 0


def test_a_name_registered_twice_is_refused(toy):
    with pytest.raises(ValueError, match=f"objective '{NAME}' is registered already"):
        register_objective(TOY)


def test_an_objective_with_metrics_needs_predict_and_measure(toy):
    with pytest.raises(ValueError, match="objective 'unscored': metrics mean_abs_error but no predict and measure"):
        register_objective(replace(TOY, name="unscored", heads={}, measure=None))


def test_an_unknown_objective_is_refused_naming_the_known_ones():
    with pytest.raises(ValidationError, match=r"objective\n.*unknown objective 'patch_mean' \(known: 'seq2seq', 'mlm'"):
        dataset(objective=NAME)

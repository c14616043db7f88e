"""OS-MD (recipes/osmd): the paired data, the privileged-input recipe fields, the layout, the
one-stage loss, and a short run of the recipe evaluated on held-out scans that hold no sound."""

from __future__ import annotations

import json
import tarfile
from itertools import islice

import pytest
import torch
import webdataset as wds
from conftest import REPO, unimodal

from unimodal.cli import main
from unimodal.config import RecipeError, expand_shards
from unimodal.data.decode import decode_example
from unimodal.data.stream import eval_samples
from unimodal.demo.avmnist import write_avmnist
from unimodal.demo.mixture import WORDS
from unimodal.model import UnifiedModel
from unimodal.model.distill import DistillPlan
from unimodal.model.pretrained import load_weights
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import BOS_ID, shard_texts, train_text_tokenizer
from unimodal.train.engine import model_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

OSMD = REPO / "recipes" / "osmd"
STEPS = ["--set", "train.steps=3", "--set", "train.checkpoint_every=3", "--set", "logging.every=3"]


@pytest.fixture(scope="module")
def osmd_workspace(tmp_path_factory):
    """data/avmnist at 5% of the scans and runs/osmd/tokenizer/sp.model, as the recipes name them
    (DTMF tones only: the same bytes whether or not the machine has espeak-ng)."""
    root = tmp_path_factory.mktemp("osmd")
    write_avmnist(root / "data" / "avmnist", scale=0.05, speech=False)
    shards = [str(p) for p in sorted((root / "data" / "avmnist" / "train").glob("*.tar"))]
    train_text_tokenizer(shard_texts(shards), root / "runs" / "osmd" / "tokenizer", vocab_size=64)
    return root


@pytest.fixture
def in_osmd(osmd_workspace, monkeypatch):
    monkeypatch.chdir(osmd_workspace)
    return osmd_workspace


def members(tar) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    with tarfile.open(tar) as f:
        for name in f.getnames():
            key, ext = name.split(".", 1)
            out.setdefault(key, set()).add(ext)
    return out


def test_pairs_hold_sound_in_training_only_and_the_same_seed_writes_the_same_bytes(osmd_workspace, tmp_path):
    data = osmd_workspace / "data" / "avmnist"
    assert json.loads((data / "index.json").read_text()) == {"train": 2 * 72, "test": 18}  # 2 copies of 72 scans
    assert all(
        exts == {"png", "wav", "txt", "json"} for exts in members(data / "train" / "avmnist-000000.tar").values()
    )
    assert all(exts == {"png", "txt", "json"} for exts in members(data / "test" / "avmnist-000000.tar").values())
    for sample in wds.WebDataset(str(data / "test" / "avmnist-000000.tar"), shardshuffle=False):
        assert sample["txt"].decode() == WORDS[json.loads(sample["json"])["label"]]
    write_avmnist(tmp_path, scale=0.05, speech=False)
    for split, name in (("train", "avmnist-000001.tar"), ("test", "avmnist-000000.tar")):
        assert (tmp_path / split / name).read_bytes() == (data / split / name).read_bytes()
    write_avmnist(tmp_path, scale=0.05, occlusion=0, speech=False)
    assert (tmp_path / "test" / "avmnist-000000.tar").read_bytes() != (
        data / "test" / "avmnist-000000.tar"
    ).read_bytes()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["data.datasets.0.privileged=[video]"], "privileged: video not among the dataset's inputs"),
        (["data.datasets.0.privileged=[image, audio]"], "at least one ordinary input must remain"),
        (["data.datasets.0.privileged=[audio, audio]"], "names one twice"),
        (
            ["data.datasets.0.privileged=[]", "data.datasets.0.distill.weight=2"],
            "distill: only for datasets with privileged inputs",
        ),
        (["data.datasets.0.objective=mim", "data.datasets.0.target=null"], "privileged: only for objective seq2seq"),
    ],
)
def test_privileged_inputs_are_validated_naming_the_file_and_field(in_osmd, sets, message):
    with pytest.raises(RecipeError) as err:
        load_recipe(OSMD / "osmd.yaml", sets)
    assert str(OSMD / "osmd.yaml") in str(err.value) and "data.datasets.0" in str(err.value)
    assert message in str(err.value)


def batch_of(recipe, n: int, training: bool) -> dict:
    ds = recipe.data.datasets[0]
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    shards = ds.shards if training else ds.eval_shards
    raws = islice(eval_samples(expand_shards(shards)), n)
    seqs = [tokenizer(decode_example(raw, 0, ds, recipe.tokenizer, training)) for raw in raws]
    return tokenizer, collate_rows([seqs[: n // 2], seqs[n // 2 :]], tokenizer.patch_dims, BOS_ID)  # packed: 2 rows


def test_layout_hallucination_tokens_in_view_0_sound_in_view_1_and_none_at_test(in_osmd):
    recipe = load_recipe(OSMD / "osmd.yaml")
    tokens = recipe.data.datasets[0].distill.tokens
    _, train = batch_of(recipe, 4, training=True)
    _, test = batch_of(recipe, 4, training=False)
    audio = 3  # modality_codes()["audio"]
    for batch, views in ((train, {0, 1}), (test, {0})):
        real = batch["enc_sample"] >= 0
        assert set(batch["enc_view"][real].tolist()) == views
        assert int(batch["enc_masked"].sum()) == 4 * tokens  # the hallucination tokens, all in view 0
        assert not (batch["enc_masked"] & (batch["enc_view"] == 1)).any()
    assert (train["modality"][train["enc_view"] == 1] == audio).all()
    assert not (test["modality"] == audio).any() and len(test["patches_audio"]) == 0


def model_for(recipe, tokenizer) -> UnifiedModel:
    torch.manual_seed(0)
    model = UnifiedModel(model_config(recipe, tokenizer.vocab_size, tokenizer.patch_dims))
    model.distill = DistillPlan.of(recipe.data.datasets)
    return model


def test_one_backward_reaches_the_hallucination_network_and_the_fusion(in_osmd):
    recipe = load_recipe(OSMD / "osmd.yaml")
    tokenizer, batch = batch_of(recipe, 6, training=True)
    model = model_for(recipe, tokenizer)
    model(batch)["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())  # every parameter in the graph (ZeRO expects it)
    # the hallucination queries and the encoder that computes them, the fusion (decoder), both modalities' stems
    for prefix in ("mask_emb", "encoder", "decoder", "stems.image", "stems.audio"):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix)), prefix


def loss_terms(recipe, batch, **distill) -> float:
    recipe = recipe.model_copy(deep=True)
    recipe.data.datasets[0].distill = recipe.data.datasets[0].distill.model_copy(update=distill)
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets, recipe.seed)
    return float(model_for(recipe, tokenizer)(batch)["loss"])


def test_the_one_loss_is_student_plus_teacher_plus_lambda_times_distillation(in_osmd):
    recipe = load_recipe(OSMD / "osmd.yaml")
    _, batch = batch_of(recipe, 6, training=True)
    joint0, joint1, joint3 = (loss_terms(recipe, batch, weight=w) for w in (0.0, 1.0, 3.0))
    distill = joint1 - joint0
    assert distill > 0 and joint3 - joint0 == pytest.approx(3 * distill, rel=1e-4)
    teacher0 = loss_terms(recipe, batch, train="hallucinate", weight=0.0)  # teacher CE alone
    assert 0 < teacher0 < joint0  # the student term is the rest of joint0


def test_osmd_recipe_trains_and_evaluates_from_the_image_alone(in_osmd):
    out = in_osmd / "runs" / "osmd" / "osmd"
    result = unimodal("train", str(OSMD / "osmd.yaml"), "--nproc", "1", *STEPS, cwd=in_osmd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((out / "done.json").read_text())["steps"] == 3
    # the held-out shard holds no wav: evaluation reads the scans alone (`unimodal eval`, in this process)
    report = in_osmd / "eval.json"
    main(["eval", str(OSMD / "osmd.yaml"), "--checkpoint", str(out), "--json", str(report)])
    digits = json.loads(report.read_text())["digits"]
    assert (digits["samples"], digits["skipped"]) == (18, 0)
    assert 0 <= digits["metrics"]["exact_match"] <= 1
    # --drop of a privileged modality changes nothing: evaluation never reads it
    dropped = in_osmd / "dropped.json"
    main(["eval", str(OSMD / "osmd.yaml"), "--checkpoint", str(out), "--drop", "audio", "--json", str(dropped)])
    assert json.loads(dropped.read_text())["digits"]["metrics"] == digits["metrics"]


def test_two_stage_baseline_freezes_the_hallucination_network_then_trains_the_fusion(in_osmd):
    result = unimodal("curriculum", str(OSMD / "two_stage" / "curriculum.yaml"), "--nproc", "1", *STEPS, cwd=in_osmd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first, _ = load_weights(in_osmd / "runs" / "osmd" / "two_stage" / "stage1")
    second, _ = load_weights(in_osmd / "runs" / "osmd" / "two_stage" / "stage2")
    changed = {name.split(".")[0] for name in first if not torch.equal(first[name], second[name])}
    assert changed == {"decoder", "dec_pos"}  # the encoder, its queries and the LM head as stage 1 left them

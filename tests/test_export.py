"""`unimodal export` of real 2-rank ZeRO-2 and ZeRO-3 checkpoints, loaded with `unimodal.load_pretrained`.

The reference is the engine itself: at its last step a stage gathers its
engine's module (`full_state_dict`) into `model.safetensors`, and the engine's
forward is that module's forward (fp32 on CPU). The checkpoint exported is
that same last step, so every consolidated tensor must equal the engine's
bit for bit, which a wrong shard order or offset cannot pass (see
`test_a_consolidation_in_the_wrong_shard_order_is_caught`); logits of the
loaded model on a real batch must then match the engine's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from itertools import islice

import pytest
import torch
import yaml
from conftest import SMOKE, TINY_EVERY, TINY_STEPS, PlantsAFile
from conftest import unimodal as run_unimodal

import unimodal
from unimodal.cli import main
from unimodal.config import expand_shards
from unimodal.data.decode import decode_example
from unimodal.data.stream import eval_samples
from unimodal.model import UnifiedModel
from unimodal.model.pretrained import load_tasks, load_weights
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import BOS_ID
from unimodal.train.checkpoint import tag, weights_only_loads
from unimodal.train.export import ExportError, export


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def run(request, tiny_run, workspace):
    """A finished run of the given ZeRO stage whose `latest` checkpoint is its last step."""
    if request.param == 2:
        return tiny_run
    out = workspace / "runs" / "export-zero3"
    sets = [
        "train.steps=2",
        "train.checkpoint_every=2",
        "data.workers=0",
        f"train.output_dir={out}",
        "deepspeed.zero_optimization.stage=3",
    ]
    result = run_unimodal(
        "train", str(SMOKE / "stage1.yaml"), "--nproc", "2", *[a for s in sets for a in ("--set", s)], cwd=workspace
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def eval_batch(run_dir) -> dict[str, torch.Tensor]:
    """Four held-out samples of each dataset of the run, one a row, as evaluation lays them out."""
    recipe = load_recipe(run_dir / "recipe.yaml", check_files=False)
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets)
    seqs = [
        tokenizer(decode_example(raw, d, ds, recipe.tokenizer, training=False))
        for d, ds in enumerate(recipe.data.datasets)
        for raw in islice(eval_samples(expand_shards(ds.eval_shards)), 4)
    ]
    return collate_rows([[s] for s in seqs], tokenizer.patch_dims, BOS_ID)


@torch.no_grad()
def logits(model: UnifiedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    memory, enc_sample = model.encode(batch)
    return model.lm_head(model.decoder_states(batch["dec_in"], memory, enc_sample))


def test_exported_model_has_the_engines_weights_and_logits(run, in_workspace, tmp_path):
    out = tmp_path / "export"
    main(["export", str(run), str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "sp.model",
        "tasks.json",
        "tokenizer.json",
    ]
    trained_on = load_recipe(run / "recipe.yaml", check_files=False).data.datasets
    assert load_tasks(out) == load_tasks(run) == trained_on  # the finished stage's too

    engine_state, cfg = load_weights(run)  # the engine's module at the last step
    exported, exported_cfg = load_weights(out)
    assert exported_cfg == cfg and exported.keys() == engine_state.keys()
    assert all(torch.equal(exported[k], engine_state[k]) for k in engine_state)
    torch.manual_seed(0)
    initial = UnifiedModel(cfg).state_dict()  # as the run started: training moved the weights
    assert sum(not torch.equal(exported[k], initial[k]) for k in initial) > len(initial) // 2

    model = unimodal.load_pretrained(out)
    engine = UnifiedModel(cfg)
    engine.load_state_dict(engine_state)
    batch = eval_batch(run)
    torch.testing.assert_close(logits(model, batch), logits(engine.eval(), batch))
    assert not model.training and model.lm_head.weight is model.tok_emb.weight  # tied again once loaded

    tokenizer = unimodal.load_tokenizer(out)
    assert tokenizer.vocab_size == cfg.vocab_size and tokenizer.text.decode(tokenizer.text.encode("7 3")) == "7 3"


def test_a_consolidation_in_the_wrong_shard_order_is_caught(tiny_run, in_workspace, tmp_path):
    """The check above is not vacuous: rank 0's and rank 1's partitions swapped, the weights differ."""
    swapped = tmp_path / "run"
    shutil.copytree(tiny_run, swapped, ignore=shutil.ignore_patterns("wandb", "tensorboard"))
    step = swapped / "checkpoints" / tag(TINY_STEPS)
    rank0, rank1 = (step / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1))
    rank0.rename(step / "tmp")
    rank1.rename(rank0)
    (step / "tmp").rename(rank1)
    export(swapped, tmp_path / "export")
    engine_state, _ = load_weights(tiny_run)
    exported, _ = load_weights(tmp_path / "export")
    assert sum(not torch.equal(exported[k], engine_state[k]) for k in engine_state) > len(engine_state) // 2


def test_export_takes_the_checkpoints_dir_and_an_earlier_tag(tiny_run, in_workspace, tmp_path):
    written = export(tiny_run / "checkpoints", tmp_path / "earlier", tag=tag(TINY_EVERY))
    assert (written["run"], written["tag"]) == (str(tiny_run), tag(TINY_EVERY))
    earlier, _ = load_weights(tmp_path / "earlier")
    last, _ = load_weights(tiny_run)
    assert not torch.equal(earlier["tok_emb.weight"], last["tok_emb.weight"])


def test_eval_accepts_an_export_and_loading_needs_no_deepspeed(tiny_run, in_workspace, tmp_path, capsys):
    out = tmp_path / "export"
    export(tiny_run, out)
    code = f"import sys, unimodal; unimodal.load_pretrained({str(out)!r}); assert 'deepspeed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    capsys.readouterr()
    main(["eval", str(tiny_run / "recipe.yaml"), "--checkpoint", str(out), "--set", "train.max_new_tokens=2"])
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["dataset", "modality", "task", "metric", "value", "samples"]
    assert [row.split()[0] for row in table[2:]] == ["digit-captions", "number-words"]


def test_export_names_what_is_missing(tiny_run, in_workspace, tmp_path, capsys):
    with pytest.raises(ExportError, match=f"{tmp_path}: no checkpoint here: neither .*checkpoints/latest nor .*latest"):
        export(tmp_path, tmp_path / "out")
    bare = tmp_path / "bare"
    shutil.copytree(tiny_run / "checkpoints", bare / "checkpoints")
    with pytest.raises(ExportError, match=f"{bare}: no recipe.yaml"):
        export(bare, tmp_path / "out")
    with pytest.raises(SystemExit) as exit:
        main(["export", str(bare / "checkpoints"), str(tmp_path / "out")])
    assert exit.value.code == 2 and f"error: {bare}: no recipe.yaml" in capsys.readouterr().err

    shutil.copy(tiny_run / "recipe.yaml", bare)
    recipe = yaml.safe_load((bare / "recipe.yaml").read_text())
    recipe["model"]["overrides"] = {"enc_layers": 1}
    (bare / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(
        ExportError, match=rf"(?s){tag(TINY_STEPS)} does not hold the model of .*recipe.yaml: .*Unexpected key\(s\)"
    ):
        export(bare, tmp_path / "out")
    for part in (bare / "checkpoints" / tag(TINY_STEPS)).glob("*_optim_states.pt"):
        part.unlink()
    with pytest.raises(ExportError, match=rf"{tag(TINY_STEPS)}: no ZeRO partitions \(\*_optim_states.pt\)"):
        export(bare, tmp_path / "out")


def test_export_reads_checkpoint_files_without_unpickling_code(tmp_path):
    planted = tmp_path / "planted"
    hostile = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": PlantsAFile(planted)}, hostile)
    with weights_only_loads(), pytest.raises(Exception, match="Weights only load failed"):
        torch.load(hostile, weights_only=False)  # as DeepSpeed's zero_to_fp32 asks
    assert not planted.exists()
    assert torch.load is not None and torch.load.__name__ == "load"  # restored on the way out

"""Recipe validation: mistakes fail before any process starts, naming the file and the field."""

from __future__ import annotations

import pytest
import yaml
from conftest import SMOKE, unimodal

from unimodal.config import RecipeError
from unimodal.recipe import apply_overrides, load_recipe


def write_variant(tmp_path, edit, name="bad.yaml"):
    raw = yaml.safe_load((SMOKE / "stage2.yaml").read_text())
    edit(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_smoke_recipes_validate(in_workspace):
    recipe = load_recipe(SMOKE / "stage2.yaml")
    assert [d.modality for d in recipe.data.datasets] == ["image", "text", "audio", "video"]
    assert recipe.deepspeed["zero_optimization"]["stage"] == 2
    assert recipe.init_from == "previous"


def test_overrides_set_nested_fields_and_list_items(in_workspace):
    recipe = load_recipe(SMOKE / "stage1.yaml", ["train.steps=40", "data.datasets.1.weight=3", "train.lr=5e-4"])
    assert recipe.train.steps == 40
    assert recipe.data.datasets[1].weight == 3.0
    assert recipe.train.lr == 5e-4
    with pytest.raises(RecipeError, match="expected FIELD=VALUE"):
        apply_overrides({}, ["train.steps"])


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda r: r["train"].update(stepz=3), "train.stepz", "Extra inputs"),
        (lambda r: r["train"].update(steps="many"), "train.steps", "integer"),
        (
            lambda r: r["data"]["datasets"][2]["inputs"].update(audio="png"),
            "data.datasets.2.inputs",
            "no audio decoder",
        ),
        (
            lambda r: r["data"]["datasets"][0].update(inputs={"smell": "png"}),
            "data.datasets.0.inputs",
            "unknown modality",
        ),
        (lambda r: r["data"]["datasets"][0].update(target="json"), "data.datasets.0.target", "needs a path"),
        (lambda r: r["data"]["datasets"][0].update(weight=-1), "data.datasets.0.weight", "greater than 0"),
    ],
)
def test_invalid_fields_are_named(in_workspace, tmp_path, edit, field, words):
    path = write_variant(tmp_path, edit)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and field in message and words in message


def test_missing_shard_is_named(in_workspace, tmp_path):
    path = write_variant(
        tmp_path, lambda r: r["data"]["datasets"][2].update(shards="data/demo/train/audio-{000000..000009}.tar")
    )
    with pytest.raises(
        RecipeError,
        match=r"data\.datasets\.2\.shards \(spoken-digits\): shard not found: data/demo/train/audio-000002\.tar",
    ):
        load_recipe(path)


def test_cli_rejects_a_bad_recipe_before_launching(in_workspace, tmp_path):
    path = write_variant(tmp_path, lambda r: r["data"]["datasets"][1].update(inputs={"text": "mp4"}))
    result = unimodal(
        "train",
        str(path),
        "--nproc",
        "2",
        "--set",
        f"train.output_dir={tmp_path / 'out'}",
        cwd=in_workspace,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        str(path) in result.stderr and "data.datasets.1.inputs" in result.stderr and "no text decoder" in result.stderr
    )
    assert "deepspeed" not in result.stdout + result.stderr.lower().replace(str(path).lower(), "")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.preset=nope", ["model.preset", "'tiny', 'small', 'base' or 'large'"]),
        ("model.overrides={d_modle: 256}", ["model.overrides", "d_modle", "the fields are d_model, n_heads"]),
        ("model.overrides={n_heads: 5}", ["model.overrides", "d_model 128 not divisible by n_heads 5"]),
        ("data.datasets.0.objective=mlx", ["data.datasets.0", "objective", "'seq2seq'"]),
        ("data.datasets.0.inputs={depth: npy}", ["data.datasets.0", "unknown modality 'depth'", "known: text, image"]),
    ],
)
def test_closed_sets_refused_by_every_command_before_a_rank_starts(in_workspace, capsys, override, words):
    """`unimodal train`, `plan` and `curriculum` exit 2 naming the field and the allowed values; nothing is written."""
    from unimodal.cli import main

    out = in_workspace / "runs" / "refused"
    for command in (
        ["train", str(SMOKE / "stage1.yaml")],
        ["plan", str(SMOKE / "stage1.yaml")],
        ["curriculum", str(SMOKE / "curriculum.yaml")],
    ):
        with pytest.raises(SystemExit) as stop:
            main([*command, "--set", override, "--set", f"train.output_dir={out}"])
        err = capsys.readouterr().err
        assert stop.value.code == 2, err
        assert all(w in err for w in words), err
    assert not out.exists()

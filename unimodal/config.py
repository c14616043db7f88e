"""Typed recipes: one YAML per curriculum stage, validated before any process starts.

A mistake in a recipe (unknown field, wrong type, missing shard, a modality
with no decoder) must cost seconds, not a cluster allocation: `load_recipe`
reads YAML safely, applies `--set` overrides, validates with pydantic and
checks that every local shard exists, and raises `RecipeError` naming the file
and the field.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import braceexpand
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unimodal.data.fields import DECODABLE, check_field

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # names metrics: `loss/<name>`
    task: str
    shards: str | list[str]
    eval_shards: str | list[str] | None = None
    inputs: dict[str, str] = Field(min_length=1)
    target: str
    weight: float = Field(1.0, gt=0)
    prompt: str | None = None  # text put before the inputs; defaults to the task name
    # true: shards drawn with replacement, an endless stream per rank and worker (for mixing);
    # false: epochs, shards split over ranks and workers so each sample is read once per epoch
    resample: bool = True

    @field_validator("inputs")
    @classmethod
    def _inputs_decodable(cls, inputs: dict[str, str]) -> dict[str, str]:
        for modality, field in inputs.items():
            if modality not in DECODABLE:
                raise ValueError(f"unknown modality {modality!r} (known: {', '.join(DECODABLE)})")
            check_field(field, modality)
        return inputs

    @field_validator("target")
    @classmethod
    def _target_is_text(cls, target: str) -> str:
        check_field(target, "text")
        return target

    @property
    def modality(self) -> str:
        """The dataset's main input modality: the first non-text input, else text."""
        return next((m for m in self.inputs if m != "text"), "text")

    @property
    def task_prompt(self) -> str:
        return self.prompt if self.prompt is not None else self.task


class DataConfig(Strict):
    batch_tokens: int = Field(4096, gt=0)  # tokens computed (encoder + decoder, padding too) per micro-batch
    # encoder tokens per row when packing samples back to back; absent: one sample a row (padded)
    pack_length: int | None = Field(None, gt=0)
    workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(500, ge=0)
    # stop the run once a dataset's skipped (broken) samples exceed this fraction of those read
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    datasets: list[DatasetConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _rows_fit(self) -> DataConfig:
        if self.pack_length is not None and self.pack_length >= self.batch_tokens:
            raise ValueError(f"pack_length {self.pack_length} must be below batch_tokens {self.batch_tokens}: a row must fit a batch")
        return self

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, datasets: list[DatasetConfig]) -> list[DatasetConfig]:
        names = [d.name for d in datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"dataset names must be unique, repeated: {sorted(dup)}")
        return datasets


class ImageTokens(Strict):
    size: int = Field(32, gt=0)
    patch: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _divides(self) -> ImageTokens:
        if self.size % self.patch:
            raise ValueError(f"patch {self.patch} must divide size {self.size}")
        return self


class AudioTokens(Strict):
    sample_rate: int = 16000
    seconds: float = Field(1.0, gt=0)  # clips are cropped or zero-padded to this length
    n_fft: int = 512
    hop: int = 160
    n_mels: int = 64
    f_max: float | None = None
    patch_frames: int = 10
    patch_mels: int = 16

    @model_validator(mode="after")
    def _divides(self) -> AudioTokens:
        if self.n_mels % self.patch_mels:
            raise ValueError(f"patch_mels {self.patch_mels} must divide n_mels {self.n_mels}")
        return self


class VideoTokens(Strict):
    frames: int = Field(8, gt=0)
    # absent: `frames` spread evenly over the whole clip; set: `frames` taken at this rate
    # from the middle of the clip (the last frame repeats if the clip is too short)
    fps: float | None = Field(None, gt=0)
    size: int = Field(32, gt=0)
    patch: int = Field(8, gt=0)
    tubelet: int = Field(2, gt=0)

    @model_validator(mode="after")
    def _divides(self) -> VideoTokens:
        if self.size % self.patch or self.frames % self.tubelet:
            raise ValueError("patch must divide size and tubelet must divide frames")
        return self


class TokenizerConfig(Strict):
    text: Path  # SentencePiece model, trained with `unimodal tokenizer train`
    max_text_tokens: int = Field(64, gt=0)
    image: ImageTokens = ImageTokens()
    audio: AudioTokens = AudioTokens()
    video: VideoTokens = VideoTokens()


class ModelSection(Strict):
    preset: str = "tiny"
    overrides: dict[str, Any] = {}  # any ModelConfig field, e.g. {d_model: 256}


class TrainConfig(Strict):
    steps: int = Field(gt=0)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    checkpoint_every: int = Field(100, gt=0)
    output_dir: Path
    max_new_tokens: int = Field(24, gt=0)  # greedy decoding length at evaluation


class WandbConfig(Strict):
    project: str = "unimodal"
    entity: str | None = None
    # auto: online when WANDB_API_KEY is set, offline otherwise
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class LoggingConfig(Strict):
    every: int = Field(10, gt=0)
    wandb: WandbConfig = WandbConfig()


class Recipe(Strict):
    name: str
    seed: int = 0
    # absent: from scratch; "previous": the previous curriculum stage's weights;
    # otherwise a directory holding model.safetensors
    init_from: str | None = None
    model: ModelSection = ModelSection()
    tokenizer: TokenizerConfig
    data: DataConfig
    train: TrainConfig
    deepspeed: dict[str, Any] = {}
    logging: LoggingConfig = LoggingConfig()


def expand_shards(spec: str | list[str]) -> list[str]:
    """Brace-expand a shard pattern (or list of them) into shard URLs."""
    specs = [spec] if isinstance(spec, str) else spec
    return [url for s in specs for url in braceexpand.braceexpand(s)]


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML; list items by index)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        path, sep, value = item.partition("=")
        if not sep or not path:
            raise RecipeError(f"--set {item!r}: expected FIELD=VALUE, e.g. train.steps=40")
        keys = path.split(".")
        node: Any = raw
        for depth, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[_index(node, key, path)]
            else:
                node = node.setdefault(key, {})
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"--set {item!r}: {'.'.join(keys[: depth + 1])} is not a section")
        last = keys[-1]
        parsed = yaml.safe_load(value)
        if isinstance(node, list):
            node[_index(node, last, path)] = parsed
        else:
            node[last] = parsed
    return raw


def _index(node: list, key: str, path: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise RecipeError(f"--set {path}: {key!r} is not an index of a list of {len(node)}")
    return int(key)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping at the top level")
    return raw


def load_recipe(path: str | Path, overrides: list[str] = (), check_files: bool = True) -> Recipe:
    """Read, override, validate. Raises RecipeError naming `path` and the field."""
    raw = apply_overrides(read_yaml(path), list(overrides))
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        lines = [f"{path}: invalid recipe"]
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"]) or "(top level)"
            lines.append(f"  {where}: {e['msg']}")
        raise RecipeError("\n".join(lines)) from None
    if check_files:
        check_recipe_files(recipe, path)
    return recipe


def check_recipe_files(recipe: Recipe, path: str | Path) -> None:
    """Every local shard and the tokenizer model must exist before launch."""
    for i, ds in enumerate(recipe.data.datasets):
        for field in ("shards", "eval_shards"):
            spec = getattr(ds, field)
            if spec is None:
                continue
            for url in expand_shards(spec):
                if not url.startswith(REMOTE_PREFIXES) and not Path(url).is_file():
                    raise RecipeError(
                        f"{path}: data.datasets.{i}.{field} ({ds.name}): shard not found: {url}"
                    )
    if not recipe.tokenizer.text.is_file():
        raise RecipeError(
            f"{path}: tokenizer.text: SentencePiece model not found: {recipe.tokenizer.text} "
            "(train one with `unimodal tokenizer train`)"
        )
    init = recipe.init_from
    if init not in (None, "previous") and not (Path(init) / "model.safetensors").is_file():
        raise RecipeError(f"{path}: init_from: no model.safetensors in {init}")

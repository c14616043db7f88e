"""A trained model on disk, loaded without DeepSpeed and without unpickling anything.

    model.safetensors  every tensor of the model's state_dict, fp32 (the tied LM head as its own copy)
    config.json        the ModelConfig
    tasks.json         the tasks it was trained on: the recipe's datasets and plugins (`load_tasks`)
    sp.model           the SentencePiece model                               (`unimodal export`)
    tokenizer.json     the recipe's tokenizer section, `text` naming sp.model (`unimodal export`)

A finished stage's output directory holds the first three; `unimodal export`
writes all five from a run's ZeRO checkpoint. Both load with `unimodal.load_pretrained`,
and `unimodal eval --checkpoint` takes either; predictions (`unimodal.pipeline`) need all five.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from unimodal.config import DatasetConfig, TokenizerConfig
from unimodal.modalities.text import TEXT
from unimodal.model import ModelConfig, UnifiedModel
from unimodal.plugins import import_plugins
from unimodal.tokenize.multimodal import MultimodalTokenizer

WEIGHTS, MODEL_CONFIG, TASKS = "model.safetensors", "config.json", "tasks.json"
TEXT_MODEL, TOKENIZER_CONFIG = "sp.model", "tokenizer.json"


class NotPretrained(FileNotFoundError):
    """A directory without the files of a trained model."""


def save_weights(out_dir: Path, state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """The config first, the weights last and atomically: a directory with model.safetensors is complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MODEL_CONFIG).write_text(cfg.model_dump_json(indent=2))
    tmp = out_dir / (WEIGHTS + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(out_dir / WEIGHTS)


def save_tasks(out_dir: Path, datasets: Sequence[DatasetConfig], plugins: Sequence[str]) -> None:
    """tasks.json: each dataset entry as the run validated it (name, task, prompt, inputs, objective, ...)
    and the plugins its modalities or objectives come from, so the model can be prompted as it was trained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = {
        "plugins": list(plugins),  # imported before the tasks are validated again
        "tasks": [ds.model_dump(mode="json") for ds in datasets],  # in the recipe's order
    }
    (out_dir / TASKS).write_text(json.dumps(tasks, indent=2))


def save_tokenizer(out_dir: Path, cfg: TokenizerConfig) -> None:
    """sp.model (a copy of `cfg.text`) and tokenizer.json (the settings, `text` naming the copy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cfg.text, out_dir / TEXT_MODEL)
    (out_dir / TOKENIZER_CONFIG).write_text(json.dumps(cfg.model_dump(mode="json") | {TEXT: TEXT_MODEL}, indent=2))


def _require(src_dir: Path, names: Sequence[str], holder: str) -> None:
    missing = [n for n in names if not (src_dir / n).is_file()]
    if missing:
        raise NotPretrained(f"{src_dir}: no {' or '.join(missing)} ({holder})")


def load_weights(src_dir: str | Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    src_dir = Path(src_dir)
    _require(src_dir, (WEIGHTS, MODEL_CONFIG), "a finished stage's output_dir and an `unimodal export` hold them")
    cfg = ModelConfig.model_validate(json.loads((src_dir / MODEL_CONFIG).read_text()))
    return load_file(str(src_dir / WEIGHTS)), cfg


def load_pretrained(path: str | Path) -> UnifiedModel:
    """The model saved in `path` (an `unimodal export` or a finished stage's output_dir), in eval mode, on CPU."""
    state, cfg = load_weights(path)
    model = UnifiedModel(cfg)
    model.load_state_dict(state)
    return model.eval()


def load_tasks(path: str | Path) -> list[DatasetConfig]:
    """The datasets a model was trained on (tasks.json), its plugins imported first."""
    path = Path(path)
    _require(path, (TASKS,), "a finished stage's output_dir and an `unimodal export` hold it")
    raw = json.loads((path / TASKS).read_text())
    import_plugins(raw["plugins"])
    return [DatasetConfig.model_validate(ds) for ds in raw["tasks"]]


def load_tokenizer(path: str | Path, datasets: Sequence[DatasetConfig] = ()) -> MultimodalTokenizer:
    """The MultimodalTokenizer of an `unimodal export`; `datasets` (recipe entries) give task prompts and
    layouts for tokenizing Examples. For decoding ids, `.text.decode(ids)` needs none."""
    path = Path(path)
    _require(path, (TOKENIZER_CONFIG, TEXT_MODEL), "`unimodal export` writes them")
    raw = json.loads((path / TOKENIZER_CONFIG).read_text())
    cfg = TokenizerConfig.model_validate(raw | {TEXT: path / raw[TEXT]})
    return MultimodalTokenizer(cfg, list(datasets))

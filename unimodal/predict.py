"""Predictions on one's own files: `unimodal.pipeline(model_dir)` in Python, `unimodal predict` on the command line.

    pipe = unimodal.pipeline("runs/demo/export")
    pipe(image="digit.png")                           # the caption, as text
    pipe.predict(audio="seven.wav", beams=4)          # Prediction(text, task, prompt)

A model directory (`unimodal export`, or a finished stage's output_dir holding
the tokenizer files too) tells how the model was trained: tasks.json its
datasets (task prompts, inputs, objectives), tokenizer.json and sp.model its
tokenizer settings (unimodal/model/pretrained.py). A file is decoded by the
modality that claims its extension, with the training decoder and those
settings; the inputs are laid out behind the task's prompt exactly as held-out
evaluation lays out a sample (the dataset's ordinary inputs, in its order);
the decoder writes the text, greedily (`generate`) or by beam search
(`beam_search`). Weights load with safetensors; nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from unimodal.config import DatasetConfig, TrainConfig
from unimodal.data.decode import decode_field
from unimodal.example import Example
from unimodal.fields import modality_of, suffix
from unimodal.modalities import BadSample, modalities
from unimodal.modalities.text import TEXT
from unimodal.model.pretrained import (
    MODEL_CONFIG,
    TASKS,
    TEXT_MODEL,
    TOKENIZER_CONFIG,
    WEIGHTS,
    load_pretrained,
    load_tasks,
    load_tokenizer,
)
from unimodal.objectives import objective
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.tokenize.objectives import complete_rows
from unimodal.tokenize.sequence import collate_rows
from unimodal.tokenize.text import BOS_ID, EOS_ID

NEEDED = (WEIGHTS, MODEL_CONFIG, TASKS, TOKENIZER_CONFIG, TEXT_MODEL)


class PredictError(ValueError):
    """Input a prediction cannot use; the message names the file, option or model directory."""


@dataclass(frozen=True)
class Prediction:
    text: str  # what the decoder wrote
    task: str  # the dataset whose task prompted it
    prompt: str  # the text prompt put before the inputs


def _label(ds: DatasetConfig) -> str:
    return f"{ds.name} (task {ds.task}, reads {' + '.join(ds.ordinary_inputs)})"


class Pipeline:
    """A trained model ready to write text for files: `pipe(image="x.png")` -> str.

    Inputs are given by modality name: a file path for a medium (image, audio,
    video, a plugin's), the text itself for text.
    """

    def __init__(self, model_dir: str | Path):
        model_dir = Path(model_dir)
        missing = [n for n in NEEDED if not (model_dir / n).is_file()]
        if missing:
            raise PredictError(
                f"{model_dir}: no {', '.join(missing)}: predictions need {', '.join(NEEDED)}; "
                f"`unimodal export RUN_DIR OUT_DIR` writes them all (a finished stage's output_dir has no "
                f"{TOKENIZER_CONFIG} or {TEXT_MODEL})"
            )
        self.tasks = load_tasks(model_dir)
        self.tokenizer = load_tokenizer(model_dir)  # its settings, and its text model for decoding ids
        self.model = load_pretrained(model_dir)
        self.max_new_tokens = TrainConfig.model_fields["max_new_tokens"].default  # evaluation's default

    def __call__(self, **kwargs) -> str:
        return self.predict(**kwargs).text

    def predict(
        self,
        task: str | None = None,
        prompt: str | None = None,
        beams: int = 1,
        max_new_tokens: int | None = None,
        **inputs: str | Path,
    ) -> Prediction:
        """The text for `inputs` ({modality: file, or text for text}); `task` picks a task by dataset or
        task name (default: the one text-writing task that reads exactly these modalities); `prompt`
        replaces its prompt; `beams` > 1 searches with that many beams instead of greedily."""
        if beams < 1:
            raise PredictError(f"--beams {beams}: must be 1 (greedy) or more")
        max_new_tokens = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new_tokens < 1:
            raise PredictError(f"--max-new-tokens {max_new_tokens}: must be 1 or more")
        ds, batch = self.batch(task, prompt, **inputs)
        if beams == 1:
            ids = self.model.generate(batch, BOS_ID, EOS_ID, max_new_tokens)[0]
        else:
            ids, _ = self.model.beam_search(batch, BOS_ID, EOS_ID, max_new_tokens, beams)
        return Prediction(self.tokenizer.text.decode(ids.tolist()), ds.name, ds.task_prompt)

    def batch(
        self, task: str | None = None, prompt: str | None = None, **inputs: str | Path
    ) -> tuple[DatasetConfig, dict[str, torch.Tensor]]:
        """The task picked (its prompt replaced by `prompt`) and the model's batch of one sample for `inputs`,
        laid out as held-out evaluation lays out a sample."""
        ds = self.pick(task, inputs)
        if prompt is not None:
            ds = ds.model_copy(update={"prompt": prompt})
        tok = MultimodalTokenizer(self.tokenizer.cfg, [ds])
        values = {m: self._read(m, inputs[m]) for m in ds.ordinary_inputs}
        seq = tok(Example(dataset=0, key="predict", inputs=values, target=None))
        return ds, collate_rows(complete_rows([[seq]]), tok.patch_dims, BOS_ID)

    def pick(self, task: str | None, inputs: dict) -> DatasetConfig:
        """The task to prompt: `task` (a dataset or task name), or the one that reads exactly `inputs`' modalities."""
        known = [m.name for m in modalities()]
        for m in inputs:
            if m not in known:
                raise PredictError(f"{m}: no such modality (modalities: {', '.join(known)})")
            if not any(m in ds.ordinary_inputs for ds in self.tasks):
                read = sorted({r for ds in self.tasks for r in ds.ordinary_inputs})
                raise PredictError(
                    f"--{m}: the model was trained on no task that reads {m} (its tasks read {', '.join(read)})"
                )
        writing = [ds for ds in self.tasks if objective(ds.objective).target]
        if task is not None:
            named = [ds for ds in self.tasks if task in (ds.name, ds.task)]
            if not named:
                raise PredictError(
                    f"--task {task}: no such task; the model's: {'; '.join(_label(ds) for ds in self.tasks)}"
                )
            if len(named) > 1:
                raise PredictError(
                    f"--task {task}: names several; give a dataset name: {'; '.join(_label(ds) for ds in named)}"
                )
            ds = named[0]
            if ds not in writing:
                raise PredictError(f"--task {task}: objective {ds.objective} writes no text")
            if set(ds.ordinary_inputs) != set(inputs):
                raise PredictError(
                    f"--task {task} reads {' + '.join(ds.ordinary_inputs)}, given {' + '.join(inputs) or 'nothing'}"
                )
            return ds
        if not inputs:
            raise PredictError(f"no input given: --{' FILE, --'.join(known)} (text: the text itself)")
        fits = [ds for ds in writing if set(ds.ordinary_inputs) == set(inputs)]
        if len(fits) == 1:
            return fits[0]
        given = " + ".join(inputs)
        if not fits:
            raise PredictError(
                f"no text-writing task reads exactly {given}; the model's: {'; '.join(_label(ds) for ds in writing)}"
            )
        raise PredictError(f"several tasks read {given}; pick one with --task: {'; '.join(_label(ds) for ds in fits)}")

    def _read(self, name: str, value: str | Path):
        """Input `value` decoded as modality `name`: text as given, a file by the training decoder."""
        if name == TEXT:
            return str(value)
        path = Path(value)
        ext = suffix(path.suffix.lstrip("."))
        owner = modality_of(ext)
        if owner is None:
            known = ", ".join(e for m in modalities() for e in m.extensions)
            raise PredictError(f"--{name} {path}: no modality decodes .{ext} (extensions: {known})")
        if owner != name:
            raise PredictError(f"--{name} {path}: .{ext} is decoded as {owner}, not {name}")
        if not path.is_file():
            raise PredictError(f"--{name} {path}: no such file")
        try:
            return decode_field({ext: path.read_bytes()}, ext, name, self.tokenizer.cfg)
        except BadSample as err:
            raise PredictError(f"--{name} {path}: does not decode: {err}") from None


def pipeline(model_dir: str | Path) -> Pipeline:
    """The model in `model_dir` (an `unimodal export`), ready for predictions: `pipeline(d)(image="x.png")`."""
    return Pipeline(model_dir)

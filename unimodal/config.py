"""The recipe schema: one YAML per curriculum stage, as typed, inert pydantic models.

This module sits just above the ground of the package: it imports only the
modality registry (unimodal/modalities/: each modality's extensions and
tokenizer settings), the objective registry (`unimodal.objectives`, read when
a recipe is validated, so objectives a plugin registers are known) and
`unimodal.fields`. A mistake in a recipe (unknown field,
wrong type, a closed set's unknown value, a modality with no decoder) is
refused here, with the allowed values; reading the YAML, `--set` overrides
and the file checks are `unimodal.recipe.load_recipe`'s.
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from pathlib import Path
from typing import Annotated, Any, Literal

import braceexpand
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from unimodal.fields import check_field, extension
from unimodal.modalities import Modality, modalities
from unimodal.modalities.text import CLS, TEXT
from unimodal.objectives import known_metric, objective, objectives
from unimodal.objectives.registry import fits
from unimodal.objectives.seq2seq import SEQ2SEQ

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What a dataset trains: a registered objective (unimodal/objectives/, one module each), refused naming the known ones
ObjectiveName = Annotated[str, AfterValidator(lambda name: objective(name).name)]
# A held-out metric of `unimodal eval`: one some registered objective reports (its module says what each means)
Metric = Annotated[str, AfterValidator(known_metric)]


class ObjectiveOptions(Strict):
    # the fraction of its inputs' tokens a masking objective masks (mlm: the text input's; mim: each
    # image, audio or video input's patches); absent: the objective's default
    mask_ratio: float | None = Field(None, gt=0, lt=1)


class DistillOptions(Strict):
    """OS-MD (recipes/osmd): how a dataset's privileged inputs teach the model that reads the others.

    `tokens` stand-ins for the privileged inputs follow the ordinary ones; the
    encoder turns them into hallucinated privileged features, which the decoder
    reads with the ordinary features (the fusion). What a stage trains
    (unimodal/model/distill.py):
      joint        one stage: CE through ordinary + hallucinated features, CE through
                   ordinary + real privileged features, and `weight` x distillation
      hallucinate  two-stage baseline, stage 1: the real-privileged CE and the distillation
      fuse         two-stage baseline, stage 2: CE through ordinary + hallucinated features
                   alone (freeze what computes them with train.trainable)
    """

    train: Literal["joint", "hallucinate", "fuse"] = "joint"
    tokens: int = Field(4, gt=0)
    weight: float = Field(1.0, ge=0)  # lambda on the distillation loss


class DatasetConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # names metrics: `loss/<name>`
    task: str
    shards: str | list[str]
    eval_shards: str | list[str] | None = None
    inputs: dict[str, str] = Field(min_length=1)
    target: str | None = None  # the text the decoder writes: objectives with a target (seq2seq) only
    objective: ObjectiveName = SEQ2SEQ
    objective_options: ObjectiveOptions = Field(default_factory=ObjectiveOptions)
    # inputs present in training only (OS-MD): held-out evaluation reads the others alone
    privileged: list[str] = []
    # names of the integer class ids of the dataset's `.cls` fields: id i is written as classes[i]; absent: as the id
    classes: list[str] | None = Field(None, min_length=1)
    distill: DistillOptions = Field(default_factory=DistillOptions)  # with privileged inputs only
    metrics: list[Metric] = []  # held-out metrics of `unimodal eval`; empty: the objective's default
    weight: float = Field(1.0, gt=0)
    prompt: str | None = None  # text put before the inputs; defaults to the task name
    # true: shards drawn with replacement, an endless stream per rank and worker (for mixing);
    # false: epochs, shards split over ranks and workers so each sample is read once per epoch
    resample: bool = True

    @field_validator("inputs")
    @classmethod
    def _inputs_decodable(cls, inputs: dict[str, str]) -> dict[str, str]:
        for modality, field in inputs.items():
            check_field(field, modality)
        return inputs

    @field_validator("target")
    @classmethod
    def _target_is_text(cls, target: str | None) -> str | None:
        if target is not None:
            check_field(target, TEXT)
        return target

    @model_validator(mode="after")
    def _objective_fits(self) -> DatasetConfig:
        o = objective(self.objective)
        if o.target and self.target is None:
            raise ValueError(
                f"target: objective {o.name} needs the text field the decoder writes, e.g. txt or json.caption"
            )
        if not o.target and self.target is not None:
            raise ValueError(f"target: objective {o.name} has no decoder target; leave target out")
        o.check(self)
        ratio = self.objective_options.mask_ratio
        if ratio is not None and o.mask_ratio is None:
            masking = [m.name for m in objectives() if m.mask_ratio is not None]
            raise ValueError(f"objective_options.mask_ratio: only for objectives {' and '.join(masking)}, not {o.name}")
        # the default written out, so the run's saved recipe.yaml shows it
        if o.mask_ratio is not None and ratio is None:
            self.objective_options = ObjectiveOptions(mask_ratio=o.mask_ratio)
        wrong = [m for m in self.metrics if not any(fits(m, spec) for spec in o.metrics)]
        if wrong:
            raise ValueError(
                f"metrics: {', '.join(wrong)} not for objective {o.name} (it takes {', '.join(o.metrics) or 'none'})"
            )
        if len(set(self.metrics)) < len(self.metrics):
            raise ValueError(f"metrics: {self.metrics} names one twice")
        if not self.metrics and o.default_metric is not None:  # written out too
            self.metrics = [o.default_metric]
        return self

    @model_validator(mode="after")
    def _classes_name_cls_fields(self) -> DatasetConfig:
        fields = [*self.inputs.values(), *([self.target] if self.target else [])]
        if self.classes is not None and not any(extension(f) == CLS for f in fields):
            raise ValueError("classes: names the ids of .cls fields, and no input or target of this dataset is one")
        return self

    @model_validator(mode="after")
    def _privileged_fits(self) -> DatasetConfig:
        p = self.privileged
        if not p:
            if self.distill != DistillOptions():  # against the defaults: a saved recipe.yaml writes them out
                raise ValueError("distill: only for datasets with privileged inputs")
            return self
        if not objective(self.objective).target:
            fusing = " or ".join(o.name for o in objectives() if o.target)
            raise ValueError(
                f"privileged: only for objective {fusing} (the decoder fuses the features), not {self.objective}"
            )
        unknown = [m for m in p if m not in self.inputs]
        if unknown:
            raise ValueError(
                f"privileged: {', '.join(unknown)} not among the dataset's inputs ({', '.join(self.inputs)})"
            )
        if len(set(p)) != len(p):
            raise ValueError(f"privileged: {p} names one twice")
        if not self.ordinary_inputs:
            raise ValueError(
                "privileged: every input is privileged; at least one ordinary input must remain for test time"
            )
        return self

    @property
    def ordinary_inputs(self) -> dict[str, str]:
        """The inputs held-out evaluation reads: all but the privileged ones."""
        return {m: f for m, f in self.inputs.items() if m not in self.privileged}

    def decoded_inputs(self, training: bool) -> dict[str, str]:
        """What a sample is decoded with: privileged inputs in training only, and not in a stage that ignores them."""
        return self.inputs if training and self.distill.train != "fuse" else self.ordinary_inputs

    @property
    def modality(self) -> str:
        """The dataset's main input modality: the first non-text input, else text."""
        return next((m for m in self.inputs if m != TEXT), TEXT)

    @property
    def task_prompt(self) -> str:
        return self.prompt if self.prompt is not None else self.task


class SchedulePoint(Strict):
    step: int = Field(ge=0)
    weights: dict[str, float]  # factor on each named dataset's share at `step`; unnamed ones keep 1


class Ramp(Strict):
    dataset: str
    steps: int = Field(gt=0)  # the dataset's factor rises linearly from 0 at step 0 to 1 at this step


LOSS_AWARE_FIELDS = ("update_every", "loss_temperature", "min_weight", "max_weight")


class SamplingConfig(Strict):
    """Which dataset each sample comes from: a strategy's mix, times factors that may change with the step.

    weights      p_i proportional to datasets[i].weight
    temperature  p_i proportional to n_i^(1/T), n_i the dataset's samples in index.json
    loss_aware   starts from weights (or from sizes when `temperature` is set); every
                 `update_every` steps the tasks whose loss fell least get more (unimodal/data/mix/)
    """

    strategy: Literal["weights", "temperature", "loss_aware"] = "weights"
    temperature: float | None = Field(None, gt=0)  # 1: proportional to size; larger: closer to uniform
    update_every: int = Field(100, gt=0)
    loss_temperature: float = Field(0.1, gt=0)  # smaller: a sharper preference for slow tasks
    min_weight: float = Field(0.0, ge=0, le=1)  # floor and ceiling on each task's loss-aware share
    max_weight: float = Field(1.0, gt=0, le=1)
    schedule: list[SchedulePoint] = []  # linear between points, constant before the first and after the last
    ramp: list[Ramp] = []

    @field_validator("ramp", mode="before")
    @classmethod
    def _one_or_many(cls, ramp: Any) -> Any:
        return [ramp] if isinstance(ramp, dict) else ramp

    @model_validator(mode="after")
    def _fields_fit_strategy(self) -> SamplingConfig:
        if self.strategy == "temperature" and self.temperature is None:
            raise ValueError("strategy temperature needs `temperature` (1: proportional to size, larger: flatter)")
        if self.strategy == "weights" and self.temperature is not None:
            raise ValueError("temperature: only for strategy temperature or loss_aware")
        # against the defaults, not the fields given: a run's saved recipe.yaml writes every field
        stray = [f for f in LOSS_AWARE_FIELDS if getattr(self, f) != type(self).model_fields[f].default]
        if stray and self.strategy != "loss_aware":
            raise ValueError(f"{', '.join(stray)}: only for strategy loss_aware")
        if self.min_weight > self.max_weight:
            raise ValueError(f"min_weight {self.min_weight} is above max_weight {self.max_weight}")
        steps = [p.step for p in self.schedule]
        if steps != sorted(set(steps)):
            raise ValueError(f"schedule: steps must increase, got {steps}")
        if any(f < 0 for p in self.schedule for f in p.weights.values()):
            raise ValueError("schedule: weights are factors and must be >= 0")
        return self

    def factors(self, names: list[str], step: int) -> list[float]:
        """Each dataset's factor at `step`: the schedule's (linear between points) times its ramps'."""
        out = [1.0] * len(names)
        if self.schedule:
            k = bisect_right([p.step for p in self.schedule], step)
            a, b = self.schedule[max(k - 1, 0)], self.schedule[min(k, len(self.schedule) - 1)]
            t = (step - a.step) / (b.step - a.step) if b.step > a.step else 0.0
            out = [(1 - t) * a.weights.get(n, 1.0) + t * b.weights.get(n, 1.0) for n in names]
        for ramp in self.ramp:
            out[names.index(ramp.dataset)] *= min(1.0, step / ramp.steps)
        return out

    def breakpoints(self) -> list[int]:
        """Steps where a factor's slope changes: the factors are linear in between."""
        return sorted({0, *(p.step for p in self.schedule), *(r.steps for r in self.ramp)})


class DataConfig(Strict):
    batch_tokens: int = Field(4096, gt=0)  # tokens computed (encoder + decoder, padding too) per micro-batch
    # encoder tokens per row when packing samples back to back; absent: one sample a row (padded)
    pack_length: int | None = Field(None, gt=0)
    workers: int = Field(1, ge=0)
    shuffle_buffer: int = Field(500, ge=0)
    # stop the run once a dataset's skipped (broken) samples exceed this fraction of those read
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    datasets: list[DatasetConfig] = Field(min_length=1)
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="after")
    def _rows_fit(self) -> DataConfig:
        if self.pack_length is not None and self.pack_length >= self.batch_tokens:
            raise ValueError(
                f"pack_length {self.pack_length} must be below batch_tokens {self.batch_tokens}: a row must fit a batch"
            )
        return self

    @model_validator(mode="after")
    def _sampling_fits_datasets(self) -> DataConfig:
        s, names = self.sampling, [d.name for d in self.datasets]
        named = [(f"sampling.schedule.{i}.weights", n) for i, p in enumerate(s.schedule) for n in p.weights]
        named += [(f"sampling.ramp.{i}.dataset", r.dataset) for i, r in enumerate(s.ramp)]
        for where, name in named:
            if name not in names:
                raise ValueError(f"{where}: no dataset named {name!r} (datasets: {', '.join(names)})")
        n = len(names)
        if s.strategy == "loss_aware" and not n * s.min_weight <= 1 <= n * s.max_weight:
            raise ValueError(
                f"sampling: no mix of {n} datasets has every share within [min_weight {s.min_weight}, "
                f"max_weight {s.max_weight}] (needs {n} x min_weight <= 1 <= {n} x max_weight)"
            )
        for step in s.breakpoints():
            if not any(s.factors(names, step)):
                raise ValueError(f"sampling: at step {step} the schedule and ramps leave every dataset at 0")
        return self

    @field_validator("datasets")
    @classmethod
    def _unique_names(cls, datasets: list[DatasetConfig]) -> list[DatasetConfig]:
        names = [d.name for d in datasets]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"dataset names must be unique, repeated: {sorted(dup)}")
        return datasets


class TokenizerFields(Strict):
    """The tokenizer's settings that belong to no one modality."""

    max_text_tokens: int = Field(64, gt=0)  # longest text input or target, in SentencePiece ids


class TokenizerConfig(TokenizerFields):
    """`max_text_tokens`, and a field per registered modality that has settings, named after it and of its
    settings type (unimodal/modalities/): `text` the SentencePiece model (trained with `unimodal tokenizer
    train`), `image`, `audio`, `video` how they are patched. The modality fields are checked against the
    registry whenever a tokenizer section is validated, so a plugin's modality has its field too."""

    model_config = ConfigDict(extra="allow")  # the modality fields, checked by `_modality_fields` alone

    @model_validator(mode="wrap")
    @classmethod
    def _modality_fields(cls, data: Any, handler: ModelWrapValidatorHandler[TokenizerConfig]) -> TokenizerConfig:
        if isinstance(data, dict):
            fields = tokenizer_schema(modalities())
            unknown = [k for k in data if k not in fields.model_fields]
            if unknown:
                raise ValueError(
                    f"{', '.join(unknown)}: no such tokenizer field (fields: {', '.join(fields.model_fields)}; "
                    "a modality of a plugin has its field once the recipe's `plugins` name its module)"
                )
            data = dict(fields.model_validate(data))
        return handler(data)

    def settings(self, name: str) -> Any:
        """Modality `name`'s settings; None for a modality without any."""
        return (self.model_extra or {}).get(name)


@functools.cache
def tokenizer_schema(registered: tuple[Modality, ...]) -> type[TokenizerFields]:
    """The closed schema of a tokenizer section while `registered` are the modalities."""
    fields: dict[str, Any] = {
        m.name: (m.settings, Field(default_factory=m.settings) if issubclass(m.settings, BaseModel) else ...)
        for m in registered
        if m.settings is not None
    }
    return create_model("TokenizerConfig", __base__=TokenizerFields, **fields)


class AdapterConfig(Strict):
    """Residual MLP per contrastive view on the pooled encoder states (unimodal/objectives/adapter.py)."""

    dim: int = Field(64, gt=0)  # hidden width; per view 2 d dim + 3 d + dim parameters (d: d_model)


# How attention within packed samples is computed (unimodal/model/transformer.py)
Attention = Literal["auto", "flex", "sdpa", "varlen"]


# Body sizes by name (parameter counts in unimodal/model/config.py)
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(d_model=128, n_heads=4, enc_layers=3, dec_layers=2),
    "small": dict(d_model=512, n_heads=8, enc_layers=8, dec_layers=8),
    "base": dict(d_model=768, n_heads=12, enc_layers=12, dec_layers=12),
    "large": dict(d_model=1536, n_heads=24, enc_layers=16, dec_layers=16),
}
Preset = Literal[tuple(PRESETS)]


class Body(Strict):
    """The Transformer body's hyperparameters: a preset's, then `model.overrides` (unimodal/model/config.py adds
    what comes from the tokenizer and the run)."""

    d_model: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    enc_layers: int = Field(gt=0)
    dec_layers: int = Field(ge=0)  # 0: encoder only (no datasets with a target then)
    mlp_ratio: float = Field(4.0, gt=0)
    max_positions: int = Field(1024, gt=0)  # longest encoder input and longest decoder input
    dropout: float = Field(0.0, ge=0, lt=1)  # embeddings, residual branches, MLP
    # on the attention probabilities, sdpa only; 0 as in OFA and UnIVAL (attention_dropout 0.0)
    attention_dropout: float = Field(0.0, ge=0, lt=1)
    activation_checkpointing: bool = False
    attention_block: int = Field(128, gt=0)  # flex: the tile (query x key tokens) its block mask keeps or skips

    @model_validator(mode="after")
    def _heads_divide_width(self) -> Body:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} not divisible by n_heads {self.n_heads}")
        return self


class ModelSection(Strict):
    preset: Preset = "tiny"
    overrides: dict[str, Any] = {}  # fields of `Body`, over the preset's, e.g. {d_model: 256}
    adapter: AdapterConfig | None = None  # absent: no adapter
    # attention within packed samples (unimodal/model/transformer.py): flex skips the masked-out
    # tiles, varlen attends each sample's tokens alone (no mask), sdpa is the dense-mask reference;
    # auto: flex on CUDA, sdpa elsewhere (no flex backward on CPU)
    attention: Attention = "auto"
    compile: bool = False  # torch.compile each Transformer block

    @model_validator(mode="after")
    def _overrides_make_a_body(self) -> ModelSection:
        try:
            Body(**(PRESETS[self.preset] | self.overrides))
        except ValidationError as err:
            problems = [
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
                for e in err.errors()
            ]
            if any(e["type"] == "extra_forbidden" for e in err.errors()):
                problems.append(f"the fields are {', '.join(Body.model_fields)}")
            raise ValueError(f"model.overrides: {'; '.join(problems)}") from None
        return self

    @model_validator(mode="after")
    def _flex_has_no_attention_dropout(self) -> ModelSection:
        if self.attention == "flex" and self.overrides.get("attention_dropout"):
            raise ValueError(
                "model.attention: flex has no attention dropout; drop model.overrides.attention_dropout or use sdpa"
            )
        return self


# The model's parts by attribute name (unimodal/model/unified.py), then the registered objectives' heads;
# lm_head is tok_emb's weight, tied.
BODY_MODULES = ("tok_emb", "stems", "mod_emb", "enc_pos", "dec_pos", "encoder", "decoder", "mask_emb")


def modules() -> tuple[str, ...]:
    """What `train.trainable` can name: the body's parts and every registered objective's heads."""
    return BODY_MODULES + tuple(head for o in objectives() for head in o.heads)


def _known_module(name: str) -> str:
    if name not in modules():
        raise ValueError(f"unknown module {name!r} (known: {', '.join(map(repr, modules()))})")
    return name


Module = Annotated[str, AfterValidator(_known_module)]


class TrainConfig(Strict):
    steps: int = Field(gt=0)
    # absent: every parameter trains; else only these modules do, the rest frozen and given no optimiser state
    trainable: list[Module] | None = Field(None, min_length=1)
    lr: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(3, gt=0)  # the newest K complete checkpoints stay; older ones are deleted
    # batches whose loss is NaN/inf on some rank are skipped (no backward, no step); past this many the run stops
    max_nonfinite_steps: int = Field(10, ge=0)
    # a rank waiting longer than this in a collective (a peer hung, stopped or lost) exits non-zero naming the step,
    # so the launcher ends the job instead of every rank waiting on
    collective_timeout_s: float = Field(600, gt=0)
    # the output directory's lock (unimodal/train/lock.py) held by a run on another host is taken over
    # once it has not been refreshed for this long
    stale_lock_s: float = Field(900, gt=0)
    output_dir: Path
    max_new_tokens: int = Field(24, gt=0)  # greedy decoding length at evaluation
    # validation during training: every N steps (not at step 0), each dataset's held-out loss and metrics on the
    # first eval_samples of its eval_shards, logged as val/<dataset>/... (unimodal/train/validate.py); absent: none
    eval_every: int | None = Field(None, gt=0)
    eval_samples: int = Field(
        256, gt=0
    )  # per dataset, the first N decodable samples of eval_shards, the same each time


class WandbConfig(Strict):
    project: str = "unimodal"
    entity: str | None = None
    # auto: online when WANDB_API_KEY is set, offline otherwise
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"


class LoggingConfig(Strict):
    every: int = Field(10, gt=0)
    wandb: WandbConfig = WandbConfig()
    tensorboard: bool = False  # also write every record as scalars to output_dir/tensorboard
    sample_log: bool = (
        False  # every rank writes the keys it trains on to output_dir/samples (unimodal/train/sample_log.py)
    )


# A plugin: a module name, e.g. `my_project.depth`
Plugin = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]


class Recipe(Strict):
    name: str
    # modules imported before the recipe is validated, in every process of the run (unimodal/plugins.py):
    # a module that registers a modality (or objective) of its own; importable by name (installed, or on PYTHONPATH)
    plugins: list[Plugin] = []
    seed: int = 0
    # absent: from scratch; "previous": the previous curriculum stage's output directory;
    # otherwise a finished stage's output directory (holding model.safetensors)
    init_from: str | None = None
    # what comes from init_from: its weights, or also its optimiser state (unimodal/train/start.py)
    carry: Literal["weights", "optimizer"] = "weights"
    model: ModelSection = ModelSection()
    tokenizer: TokenizerConfig
    data: DataConfig
    train: TrainConfig
    deepspeed: dict[str, Any] = {}
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _carry_needs_a_source(self) -> Recipe:
        if self.carry == "optimizer" and not self.init_from:
            raise ValueError("carry: 'optimizer' needs init_from, the run whose optimiser state to load")
        return self

    @model_validator(mode="after")
    def _trainable_exists(self) -> Recipe:
        if "adapter" in (self.train.trainable or []) and self.model.adapter is None:
            raise ValueError(
                "train.trainable: names adapter, but model.adapter is not set (e.g. model.adapter: {dim: 64})"
            )
        return self

    @model_validator(mode="after")
    def _validation_needs_eval_shards(self) -> Recipe:
        if self.train.eval_every and all(d.eval_shards is None for d in self.data.datasets):
            raise ValueError("train.eval_every: no dataset has eval_shards to validate on")
        return self

    @model_validator(mode="after")
    def _targets_need_a_decoder(self) -> Recipe:
        decoding = [d for d in self.data.datasets if objective(d.objective).target]
        if decoding and self.model.overrides.get("dec_layers") == 0:
            kinds = " and ".join(dict.fromkeys(d.objective for d in decoding))
            raise ValueError(
                f"model.overrides.dec_layers: 0 leaves no decoder for the {kinds} datasets "
                + ", ".join(d.name for d in decoding)
            )
        return self


def expand_shards(spec: str | list[str]) -> list[str]:
    """Brace-expand a shard pattern (or list of them) into shard URLs."""
    specs = [spec] if isinstance(spec, str) else spec
    return [url for s in specs for url in braceexpand.braceexpand(s)]

"""A curriculum: a family's stage recipes, run in order from one command.

`curriculum.yaml` lists stage files (relative to itself). Every stage is
validated before the first one starts, including what `carry: optimizer` asks
of the stage it starts from. Then, in order, a stage whose `done.json` records
all its steps is skipped and its files are left alone; a stage with a
checkpoint resumes from it (a checkpoint of another recipe is refused before
the first stage starts); any other starts as its recipe says, with
`init_from: previous` resolved to the previous stage's output directory.
`--set` overrides apply to every stage. `--fresh` runs every stage over, each
earlier run moved aside (unimodal/train/resume.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError

from unimodal.config import Recipe, RecipeError, Strict
from unimodal.recipe import load_recipe, read_yaml
from unimodal.train.checkpoint import DONE, has_checkpoint
from unimodal.train.elastic import plan
from unimodal.train.launch import StageStopped, run_stage
from unimodal.train.resume import should_resume
from unimodal.train.start import check_carry, finished_layout, layout


class CurriculumFile(Strict):
    name: str
    stages: list[str] = Field(min_length=1)


@dataclass
class Stage:
    path: Path
    recipe: Recipe
    overrides: list[str]  # the user's, plus the resolved init_from

    @property
    def done(self) -> bool:
        marker = self.recipe.train.output_dir / DONE
        return marker.is_file() and json.loads(marker.read_text())["steps"] >= self.recipe.train.steps

    @property
    def started(self) -> bool:
        return has_checkpoint(self.recipe.train.output_dir / "checkpoints")


def load_curriculum(
    path: str | Path, nproc: int, overrides: list[str] = (), check_files: bool = True, fresh: bool = False
) -> tuple[str, list[Stage]]:
    """The curriculum's name and its stages, each validated (`check_files`: shards and tokenizer exist;
    unless `fresh`, a checkpoint in a stage's output directory is of this recipe)."""
    path = Path(path)
    try:
        spec = CurriculumFile.model_validate(read_yaml(path))
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"{path}: invalid curriculum: {fields}") from None
    stages: list[Stage] = []
    for rel in spec.stages:
        stage_path = path.parent / rel
        recipe = load_recipe(stage_path, overrides, check_files)  # all files but a previous stage's weights
        extra = list(overrides)
        for other in stages:
            if other.recipe.train.output_dir.resolve() == recipe.train.output_dir.resolve():
                raise RecipeError(
                    f"{stage_path}: train.output_dir {recipe.train.output_dir} is also {other.path}'s: "
                    "each stage needs its own (a --set train.output_dir applies to every stage)"
                )
        from_previous = recipe.init_from == "previous"
        if from_previous:
            if not stages:
                raise RecipeError(f"{stage_path}: init_from: 'previous' in the first stage of {path}")
            source = str(stages[-1].recipe.train.output_dir)
            extra.append(f"init_from={source}")
            recipe = recipe.model_copy(update={"init_from": source})
        stage = Stage(stage_path, recipe, extra)
        if not fresh and should_resume(recipe, str(stage_path)) and not stage.done:
            plan(recipe, nproc, recipe.train.output_dir / "checkpoints", str(stage_path))  # on these ranks: fits?
        if recipe.carry == "optimizer" and not (stage.done or stage.started):
            # fail now, not after the stages before it have trained
            if from_previous and not stages[-1].done:
                found = layout(stages[-1].recipe, nproc)  # it will run here, on these ranks
            else:
                found = finished_layout(Path(recipe.init_from), str(stage_path))
            check_carry(recipe, nproc, found, str(stage_path))
        stages.append(stage)
    return spec.name, stages


def run_curriculum(path: str | Path, nproc: int, overrides: list[str] = (), fresh: bool = False) -> list[Stage]:
    name, stages = load_curriculum(path, nproc, overrides, fresh=fresh)
    for i, stage in enumerate(stages, 1):
        where = f"[unimodal] {name}: stage {i}/{len(stages)} {stage.recipe.name}"
        if stage.done and not fresh:
            print(f"{where} already done, skipped", flush=True)
            continue
        print(f"{where}{', resuming from its latest checkpoint' if stage.started and not fresh else ''}", flush=True)
        run_stage(stage.path, nproc, stage.overrides, fresh)
        if not stage.done:  # its ranks were told to stop, and saved a checkpoint: the next stages wait
            raise StageStopped(f"{where} stopped before its last step; run the curriculum again to resume it")
    return stages

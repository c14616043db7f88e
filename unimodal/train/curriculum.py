"""A curriculum: a family's stage recipes, run in order from one command.

`curriculum.yaml` lists stage files (relative to itself). Every stage is
validated before the first one starts. A stage whose `done.json` records all
its steps is skipped; a stage with checkpoints resumes; `init_from: previous`
becomes the previous stage's output directory (its `model.safetensors`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, ValidationError

from unimodal.config import Recipe, RecipeError, Strict, load_recipe, read_yaml
from unimodal.train.launch import run_stage
from unimodal.train.loop import DONE


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
        return (self.recipe.train.output_dir / "checkpoints" / "latest").is_file()


def load_curriculum(path: str | Path, overrides: list[str] = ()) -> tuple[str, list[Stage]]:
    path = Path(path)
    try:
        spec = CurriculumFile.model_validate(read_yaml(path))
    except ValidationError as err:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise RecipeError(f"{path}: invalid curriculum: {fields}") from None
    stages: list[Stage] = []
    for rel in spec.stages:
        stage_path = path.parent / rel
        recipe = load_recipe(stage_path, overrides)  # checks every file but a previous stage's weights
        extra = list(overrides)
        if recipe.init_from == "previous":
            if not stages:
                raise RecipeError(f"{stage_path}: init_from: 'previous' in the first stage of {path}")
            previous = str(stages[-1].recipe.train.output_dir)
            extra.append(f"init_from={previous}")
            recipe = recipe.model_copy(update={"init_from": previous})
        stages.append(Stage(stage_path, recipe, extra))
    return spec.name, stages


def run_curriculum(path: str | Path, nproc: int, overrides: list[str] = ()) -> list[Stage]:
    name, stages = load_curriculum(path, overrides)
    for i, stage in enumerate(stages, 1):
        if stage.done:
            print(f"[unimodal] {name}: stage {i}/{len(stages)} {stage.recipe.name} already done, skipped", flush=True)
            continue
        print(f"[unimodal] {name}: stage {i}/{len(stages)} {stage.recipe.name}", flush=True)
        run_stage(stage.path, nproc, stage.overrides, resume=stage.started)
    return stages

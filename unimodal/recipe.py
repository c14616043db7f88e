"""Reading a recipe: YAML, `--set` overrides, validation against the schema, file checks.

The schema itself (unimodal/config.py) is inert and imports nothing of the
package; this loader sits above the data layer, as its checks read shard
indexes. Every mistake is a `RecipeError` naming the file and the field,
raised before any process starts.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from unimodal.config import REMOTE_PREFIXES, Plugin, Recipe, RecipeError, expand_shards
from unimodal.data.index import shard_samples
from unimodal.plugins import import_plugins


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
    load_plugins(raw, path)
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


def load_plugins(raw: dict[str, Any], path: str | Path) -> None:
    """Import the recipe's `plugins` before it is validated: they register the modalities it may name.
    A list that is not one of names is left to validation to refuse."""
    try:
        plugins = TypeAdapter(list[Plugin]).validate_python(raw.get("plugins", []))
    except ValidationError:
        return
    try:
        import_plugins(plugins)
    except ImportError as err:
        raise RecipeError(f"{path}: plugins: {err}") from None


def check_recipe_files(recipe: Recipe, path: str | Path) -> None:
    """Every local shard and the tokenizer model must exist before launch."""
    for i, ds in enumerate(recipe.data.datasets):
        for field in ("shards", "eval_shards"):
            spec = getattr(ds, field)
            if spec is None:
                continue
            for url in expand_shards(spec):
                if not url.startswith(REMOTE_PREFIXES) and not Path(url).is_file():
                    raise RecipeError(f"{path}: data.datasets.{i}.{field} ({ds.name}): shard not found: {url}")
    if recipe.data.sampling.temperature is not None:
        for i, ds in enumerate(recipe.data.datasets):
            if shard_samples(expand_shards(ds.shards)) is None:
                raise RecipeError(
                    f"{path}: data.sampling.temperature weighs datasets by size, but the size of "
                    f"data.datasets.{i} ({ds.name}) is unknown: its shards have no entries in an index.json "
                    "beside them (`unimodal shards write` writes one; remote shards have none)"
                )
    if not recipe.tokenizer.text.is_file():
        raise RecipeError(
            f"{path}: tokenizer.text: SentencePiece model not found: {recipe.tokenizer.text} "
            "(train one with `unimodal tokenizer train`)"
        )
    init = recipe.init_from
    if init not in (None, "previous") and not (Path(init) / "model.safetensors").is_file():
        raise RecipeError(f"{path}: init_from: no model.safetensors in {init}")

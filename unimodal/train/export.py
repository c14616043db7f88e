"""`unimodal export RUN OUT_DIR`: a DeepSpeed checkpoint as a model that loads without DeepSpeed.

DeepSpeed's own zero_to_fp32 merges the ZeRO-1/2/3 partitions of the fp32
master weights (the true weights, also under bf16) into whole tensors; they
are checked against the model the run's `recipe.yaml` describes, then written
in the format of `unimodal.model.pretrained` with the run's tokenizer and tasks beside them.

Safety: zero_to_fp32 (DeepSpeed 0.19.8) turns torch.load's weights_only off,
which would unpickle whatever a checkpoint file holds; export makes every load
it does weights_only (`unimodal.train.checkpoint.weights_only_loads`).
What export writes holds no pickle.
"""

from __future__ import annotations

from pathlib import Path

from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from unimodal.model import UnifiedModel
from unimodal.model.pretrained import save_tasks, save_tokenizer, save_weights
from unimodal.recipe import load_recipe
from unimodal.tokenize.multimodal import MultimodalTokenizer
from unimodal.train.checkpoint import weights_only_loads
from unimodal.train.engine import model_config


class ExportError(ValueError):
    """The directory given is not a run with a checkpoint that export can read."""


def find_checkpoints(path: Path) -> tuple[Path, Path]:
    """(run dir, its checkpoints dir) for a run's output_dir or its `checkpoints/`."""
    for run, ckpts in ((path, path / "checkpoints"), (path.parent, path)):
        if (ckpts / "latest").is_file():
            if not (run / "recipe.yaml").is_file():
                raise ExportError(
                    f"{run}: no recipe.yaml (`unimodal train` writes it beside checkpoints/): "
                    "export reads the model and tokenizer settings from it"
                )
            return run, ckpts
    raise ExportError(
        f"{path}: no checkpoint here: neither {path / 'checkpoints' / 'latest'} nor {path / 'latest'} "
        "(give a run's output_dir or its checkpoints/ directory)"
    )


def export(path: str | Path, out_dir: str | Path, tag: str | None = None) -> dict:
    """Consolidate the run's checkpoint `tag` (default: `latest`) into `out_dir`; what was written."""
    run, ckpts = find_checkpoints(Path(path))
    tag = tag or (ckpts / "latest").read_text().strip()
    if not list((ckpts / tag).glob("*_optim_states.pt")):
        raise ExportError(
            f"{ckpts / tag}: no ZeRO partitions (*_optim_states.pt): not a checkpoint, "
            "or one of ZeRO stage 0, whose finished run's output_dir already holds model.safetensors"
        )
    recipe_file = run / "recipe.yaml"
    recipe = load_recipe(recipe_file, check_files=False)
    sp_model = recipe.tokenizer.text
    if not sp_model.is_file():
        raise ExportError(
            f"{recipe_file}: tokenizer.text: {sp_model} not found (relative paths are read from the working directory)"
        )
    tokenizer = MultimodalTokenizer(recipe.tokenizer, recipe.data.datasets)
    cfg = model_config(recipe, tokenizer.vocab_size, tokenizer.patch_dims)
    with weights_only_loads():
        merged = get_fp32_state_dict_from_zero_checkpoint(str(ckpts), tag=tag)
    model = UnifiedModel(cfg)
    try:
        model.load_state_dict(merged)  # strict: every name and shape the recipe's model has, nothing else
    except RuntimeError as err:
        raise ExportError(f"{ckpts / tag} does not hold the model of {recipe_file}: {err}") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(out_dir, recipe.tokenizer)
    save_tasks(out_dir, recipe.data.datasets, recipe.plugins)
    save_weights(out_dir, {k: v.detach().clone() for k, v in model.state_dict().items()}, cfg)  # last; tied head untied
    return {
        "run": str(run),
        "tag": tag,
        "out_dir": str(out_dir),
        "parameters": sum(p.numel() for p in model.parameters()),
    }

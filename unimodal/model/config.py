"""Model hyperparameters and the size presets."""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator
from torch import nn

from unimodal.config import PRESETS, Attention, Body
from unimodal.modalities import patch_modalities

# Body sizes (unimodal.config.PRESETS). Parameter counts (count_parameters, tied LM head, the objectives' heads)
# with an 8000-token vocab, max_positions 1024 and patch dims image 768, audio 256, video 1536:
#   tiny    3.1M
#   small  66.9M
#   base  210.7M   (UnIVAL-base scale: d 768, 12 heads, 12 + 12 layers; with a vocab
#                  like UnIVAL's, ~59k = BPE + image codes + location bins, it is
#                  ~250M, UnIVAL's size: the embedding grows by 51k x 768 = 39M)
#   large  1.08B
# How attention is computed (unimodal/model/transformer.py); auto: flex on CUDA, sdpa elsewhere
AttentionKind = Literal["flex", "sdpa", "varlen"]
# How the model runs, not what it is: a run may change these and still load another's weights
EXECUTION_FIELDS = ("activation_checkpointing", "attention", "attention_block", "compile")


class ModelConfig(Body):
    """Everything needed to build a UnifiedModel: the body (a recipe's preset and overrides),
    the vocab and patch dims from the tokenizer, and how the run executes it."""

    vocab_size: int
    patch_dims: dict[str, int]  # flat patch size per modality of patch_modalities(), in that order
    attention: Attention = "auto"
    compile: bool = False  # torch.compile each Transformer block
    adapter_dim: int | None = None  # hidden width of the contrastive views' adapters; None: none

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if set(self.patch_dims) != set(patch_modalities()):
            raise ValueError(f"patch_dims keys must be {patch_modalities()}, got {sorted(self.patch_dims)}")
        self.patch_dims = {m: self.patch_dims[m] for m in patch_modalities()}  # the heads' order, whatever the source's
        if self.attention == "flex" and self.attention_dropout:
            raise ValueError(
                f"attention: flex has no attention dropout; attention_dropout is {self.attention_dropout} (use sdpa)"
            )
        return self

    @classmethod
    def from_preset(cls, name: str, vocab_size: int, patch_dims: dict[str, int], **overrides) -> ModelConfig:
        """A preset's dims plus the tokenizer's sizes; overrides win over both."""
        fields = {**PRESETS[name], "vocab_size": vocab_size, "patch_dims": patch_dims}
        return cls(**{**fields, **overrides})


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights once); works on meta-device models."""
    return sum(p.numel() for p in model.parameters())

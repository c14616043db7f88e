"""The shared encoder-decoder and its configuration."""

from unimodal.model.config import PRESETS, ModelConfig, count_parameters
from unimodal.model.unified import UnifiedModel

__all__ = ["PRESETS", "ModelConfig", "UnifiedModel", "count_parameters"]

"""unimodal: pretrain one shared Transformer on image, video, audio and text."""

from unimodal.model.pretrained import load_pretrained, load_tokenizer
from unimodal.predict import pipeline

__all__ = ["load_pretrained", "load_tokenizer", "pipeline"]

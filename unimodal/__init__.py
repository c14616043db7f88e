"""unimodal: pretrain one shared Transformer on image, video, audio and text."""

from unimodal.model.pretrained import load_pretrained, load_tokenizer

__all__ = ["load_pretrained", "load_tokenizer"]

"""unimodal: pretrain one shared Transformer on image, video, audio and text."""

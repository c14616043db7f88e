"""The modality-agnostic tokenizer: SentencePiece text, patches for image/audio/video, batches."""

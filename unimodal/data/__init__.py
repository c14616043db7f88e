"""Shards to Examples: field conventions, safe decoders, streams, the task mix (mix/), the training loader."""

"""Shards to Examples: field conventions, safe decoders, streams, task mixing, the training loader."""

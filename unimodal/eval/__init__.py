"""Evaluation on held-out shards."""

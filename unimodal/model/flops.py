"""Model FLOPs of a batch, from the config and the batch's real lengths: the numerator of MFU.

Counted: every matmul the model needs for the real (unpadded) tokens, at 2
FLOPs per multiply-add; the backward pass costs twice the forward, so a
training step is 3x forward (activation recomputation is not counted: MFU
measures useful work, not work done). Per sample, with d = d_model,
r = mlp_ratio, E / T its encoder / decoder tokens, P_m its patches of
modality m with flat size p_m, V the vocabulary:

    encoder, per layer   E * (8 d^2 + 4 r d^2)      q, kv, out projections; MLP
                       + E * 4 E d                  scores QK^T and weighted sum AV
    decoder, per layer   T * (8 d^2 + 4 r d^2)      self-attention projections; MLP
                       + T * 4 T d                  causal self-attention, counted in full
                       + T * 4 d^2 + E * 4 d^2      cross-attention: q and out; kv of the memory
                       + T * 4 E d                  cross-attention scores and sum
    stems                sum_m P_m * 2 p_m d
    LM head              T * 2 d V

Causal attention is counted in full, as PyTorch's FlopCounterMode and most
published MFU figures count it; embeddings, norms and softmax are left out.
`tests/test_flops.py` checks this against FlopCounterMode on a real model.
"""

from __future__ import annotations

import torch

from unimodal.model.config import ModelConfig
from unimodal.tokenize.sequence import PATCH_MODALITIES


def forward_flops(cfg: ModelConfig, enc_len: int, dec_len: int, patches: dict[str, int]) -> int:
    """Forward FLOPs of one sample: `enc_len` encoder tokens, `dec_len` decoder tokens."""
    d, r, e, t = cfg.d_model, cfg.mlp_ratio, enc_len, dec_len
    dense = int((8 + 4 * r) * d * d)
    encoder = cfg.enc_layers * (e * dense + 4 * e * e * d)
    decoder = cfg.dec_layers * (t * dense + 4 * t * t * d + 4 * d * d * (t + e) + 4 * t * e * d)
    stems = sum(2 * n * cfg.patch_dims[m] * d for m, n in patches.items())
    return encoder + decoder + stems + 2 * t * d * cfg.vocab_size


def batch_train_flops(cfg: ModelConfig, batch: dict[str, torch.Tensor]) -> int:
    """Training FLOPs (3x forward) of a collated batch, counting real tokens only.

    Per sample, so that samples packed into one row cost what they would alone.
    """
    n = batch["dataset"].shape[0]
    enc = torch.bincount(batch["enc_sample"][batch["enc_sample"] >= 0], minlength=n).tolist()
    dec = torch.bincount(batch["dec_sample"][batch["dec_sample"] >= 0], minlength=n).tolist()
    stems = sum(2 * batch[f"patches_{m}"].shape[0] * cfg.patch_dims[m] * cfg.d_model for m in PATCH_MODALITIES)
    body = sum(forward_flops(cfg, e, t, {}) for e, t in zip(enc, dec))
    return 3 * (body + stems)

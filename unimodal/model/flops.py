"""Model FLOPs of a batch, from the config and the batch's real lengths: the numerator of MFU.

Counted: every matmul the model needs for the real (unpadded) tokens, at 2
FLOPs per multiply-add; the backward pass costs twice the forward, so a
training step is 3x forward (activation recomputation is not counted: MFU
measures useful work, not work done). With d = d_model, r = mlp_ratio, V the
vocabulary, per view of E tokens (a sample has one view; contrastive and itm
samples two, each encoded alone) and per seq2seq sample of T target tokens
and E encoder tokens, P_m patches of modality m with flat size p_m:

    encoder, per layer   E * (8 d^2 + 4 r d^2)      q, kv, out projections; MLP
                       + E * 4 E d                  scores QK^T and weighted sum AV
    decoder, per layer   T * (8 d^2 + 4 r d^2)      self-attention projections; MLP
                       + T * 4 T d                  causal self-attention, counted in full
                       + T * 4 d^2 + E * 4 d^2      cross-attention: q and out; kv of the memory
                       + T * 4 E d                  cross-attention scores and sum
    stems                sum_m P_m * 2 p_m d
    LM head              T * 2 d V
    objectives' heads    each objective's `flops` (unimodal/objectives/), e.g.
      mlm                K * 2 d V                  K: masked text tokens of mlm samples, through the LM head
      mim                sum_m M_m * 2 d p_m        M_m: masked patches of modality m
      contrastive        n * 2 * 2 d^2 + 4 n^2 d    n pairs: both views projected; both similarity matrices
      itm                6 d per view               the two inputs pooled and their product

Causal attention is counted in full, as PyTorch's FlopCounterMode and most
published MFU figures count it; embeddings, norms, pooling and softmax are
left out. So is work that is not useful: the decoder over a padding position
in a batch without seq2seq samples and heads over zero rows (both run only to
keep every parameter in the graph), the decoder's cross-attention kv of
encoder-only samples in a mixed batch, and the similarities against pairs
gathered from other ranks. `tests/test_flops.py` and `tests/test_objectives.py`
check this against FlopCounterMode on a real model.
"""

from __future__ import annotations

import numpy as np
import torch

from unimodal.modalities import modality_codes, patch_modalities
from unimodal.model.config import ModelConfig
from unimodal.objectives import objectives
from unimodal.objectives.reading import view_ids


def encoder_flops(cfg: ModelConfig, enc_len: int) -> int:
    """Forward FLOPs of the encoder over one view of `enc_len` tokens."""
    d, e = cfg.d_model, enc_len
    return cfg.enc_layers * (e * int((8 + 4 * cfg.mlp_ratio) * d * d) + 4 * e * e * d)


def decoder_flops(cfg: ModelConfig, dec_len: int, enc_len: int) -> int:
    """Forward FLOPs of the decoder and LM head writing `dec_len` tokens from `enc_len` encoder tokens."""
    d, t, e = cfg.d_model, dec_len, enc_len
    if not t:
        return 0
    dense = int((8 + 4 * cfg.mlp_ratio) * d * d)
    return (
        cfg.dec_layers * (t * dense + 4 * t * t * d + 4 * d * d * (t + e) + 4 * t * e * d) + 2 * t * d * cfg.vocab_size
    )


def forward_flops(cfg: ModelConfig, enc_len: int, dec_len: int, patches: dict[str, int]) -> int:
    """Forward FLOPs of one seq2seq sample: `enc_len` encoder tokens, `dec_len` decoder tokens."""
    stems = sum(2 * n * cfg.patch_dims[m] * cfg.d_model for m, n in patches.items())
    return encoder_flops(cfg, enc_len) + decoder_flops(cfg, dec_len, enc_len) + stems


def view_lengths(batch: dict[str, torch.Tensor]) -> np.ndarray:
    """Tokens in each sample's two views [N, 2] (a second view is empty unless contrastive or itm)."""
    n, views = batch["dataset"].shape[0], view_ids(batch).numpy()
    return np.bincount(views[views >= 0], minlength=2 * n).reshape(n, 2)


def head_flops(cfg: ModelConfig, batch: dict[str, torch.Tensor], views: np.ndarray) -> int:
    """Forward FLOPs of the objectives' own heads (each objective's `flops`) on a batch with these `view_lengths`."""
    return sum(o.flops(cfg, batch, views, tuple(modality_codes())) for o in objectives() if o.flops is not None)


def batch_train_flops(cfg: ModelConfig, batch: dict[str, torch.Tensor]) -> int:
    """Training FLOPs (3x forward) of a collated batch on the host, counting real tokens only.

    Per view and per sample, so that samples packed into one row cost what they would alone.
    Computed in numpy from the loader's host tensors, so the training step never waits on the device for it.
    """
    views = view_lengths(batch)
    enc = views.sum(1).tolist()
    dec_sample = batch["dec_sample"].numpy()
    dec = np.bincount(dec_sample[dec_sample >= 0], minlength=len(enc)).tolist()
    stems = sum(2 * batch[f"patches_{m}"].shape[0] * cfg.patch_dims[m] * cfg.d_model for m in patch_modalities())
    body = sum(encoder_flops(cfg, e) for e in views.flatten().tolist())
    body += sum(decoder_flops(cfg, t, e) for t, e in zip(dec, enc))
    return 3 * (body + stems + head_flops(cfg, batch, views))

"""The documented FLOPs formula against PyTorch's own count of the model's matmuls."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from unimodal.model import UnifiedModel
from unimodal.model.config import ModelConfig
from unimodal.model.flops import batch_train_flops, forward_flops
from unimodal.tokenize.sequence import Segment, TokenSequence, collate, collate_rows

PATCH_DIMS = {"image": 48, "audio": 40, "video": 96}


def sample(text: int, patches: dict[str, int], target: int) -> TokenSequence:
    segments = [Segment("text", torch.arange(4, 4 + text))]
    segments += [Segment(m, torch.randn(n, PATCH_DIMS[m])) for m, n in patches.items()]
    return TokenSequence(segments=segments, target=torch.arange(4, 4 + target), dataset=0)


@pytest.mark.parametrize("patches", [{"image": 9}, {"audio": 7, "video": 5}, {}])
def test_formula_matches_counted_matmuls(patches):
    cfg = ModelConfig(
        d_model=64, n_heads=4, enc_layers=3, dec_layers=2, mlp_ratio=3.0, vocab_size=101, patch_dims=PATCH_DIMS
    )
    model = UnifiedModel(cfg)
    seq = sample(text=5, patches=patches, target=6)
    batch = collate([seq], cfg.patch_dims, bos_id=2)
    # the math kernel spells attention out as matmuls the counter sees (CPU's fused one it misses)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch)
    expected = forward_flops(cfg, seq.enc_len, seq.dec_len, patches)
    assert counter.get_total_flops() == expected


def test_batch_flops_count_real_tokens_only():
    cfg = ModelConfig(d_model=64, n_heads=4, enc_layers=2, dec_layers=2, vocab_size=101, patch_dims=PATCH_DIMS)
    short, long = sample(2, {"image": 4}, 3), sample(9, {"video": 6}, 8)
    padded = collate([short, long], cfg.patch_dims, bos_id=2)
    alone = [collate([s], cfg.patch_dims, bos_id=2) for s in (short, long)]
    assert batch_train_flops(cfg, padded) == sum(batch_train_flops(cfg, b) for b in alone)
    assert batch_train_flops(cfg, alone[0]) == 3 * forward_flops(cfg, short.enc_len, short.dec_len, {"image": 4})
    packed = collate_rows([[short, long]], cfg.patch_dims, bos_id=2)  # one row, two samples
    assert batch_train_flops(cfg, packed) == batch_train_flops(cfg, padded)

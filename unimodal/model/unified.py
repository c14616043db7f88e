"""One encoder-decoder Transformer for every modality.

Modality stems turn patches into d_model vectors and the text embedding turns
ids into the same space; past that point the body cannot tell modalities apart
except through a learned modality embedding. The decoder always emits text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.model.config import ModelConfig
from unimodal.model.transformer import Stack, attention_mask
from unimodal.tokenize.sequence import IGNORE_INDEX, MODALITIES, PATCH_MODALITIES


def stem_input(patches: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Patches in the model's dtype; uint8 pixels (image, video) scaled to [-1, 1].

    The loader ships pixels as uint8, a quarter of the bytes of floats through
    worker handover and host-to-device copies; the scaling happens on device.
    """
    if patches.dtype == torch.uint8:
        return patches.to(dtype).div_(127.5).sub_(1.0)
    return patches.to(dtype)


class UnifiedModel(nn.Module):
    """Encoder over mixed-modality tokens, text decoder with a tied LM head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        # LayerNorm first: raw pixels, mel bins and video patches live on different scales.
        self.stems = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(cfg.patch_dims[m]), nn.Linear(cfg.patch_dims[m], d))
             for m in PATCH_MODALITIES}
        )
        self.mod_emb = nn.Embedding(len(MODALITIES), d)
        self.enc_pos = nn.Embedding(cfg.max_positions, d)
        self.dec_pos = nn.Embedding(cfg.max_positions, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Stack(cfg, cfg.enc_layers, decoder=False)
        self.decoder = Stack(cfg, cfg.dec_layers, decoder=True)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [B, L, d] and each token's sample number [B, L] (-1 at padding)."""
        modality = batch["modality"]
        x = self.tok_emb(batch["enc_ids"])
        for m in PATCH_MODALITIES:
            # x has the weights' dtype (fp32, or bf16 under DeepSpeed); autocast may
            # return bf16 rows. The stem runs even on zero rows so every parameter
            # is in the graph (DDP/ZeRO expect a gradient for each, even if zero).
            rows = self.stems[m](stem_input(batch[f"patches_{m}"], x.dtype)).to(x.dtype)
            at = (modality == MODALITIES.index(m)).unsqueeze(-1)
            x = x.masked_scatter(at, rows)  # fills rows in row-major [B, L] order
        x = x + self.mod_emb(modality) + self.enc_pos(batch["positions"])
        enc_sample = batch["enc_sample"]
        return self.encoder(self.drop(x), attention_mask(enc_sample, enc_sample)), enc_sample

    def decode(
        self,
        dec_in: torch.Tensor,
        memory: torch.Tensor,
        enc_sample: torch.Tensor,
        dec_sample: torch.Tensor | None = None,
        dec_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Next-token logits [B, T, vocab] for every prefix of each sample's dec_in.

        Without `dec_sample`, each row is one sample: the one its encoder row holds.
        """
        if dec_sample is None:
            dec_sample = enc_sample[:, :1].expand(-1, dec_in.shape[1])
            dec_positions = torch.arange(dec_in.shape[1], device=dec_in.device)
        x = self.drop(self.tok_emb(dec_in) + self.dec_pos(dec_positions))
        self_mask = attention_mask(dec_sample, dec_sample, causal=True)
        return self.lm_head(self.decoder(x, self_mask, memory, attention_mask(dec_sample, enc_sample)))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """loss: mean CE over every target token in the batch (what we train on);
        sample_loss: detached mean CE per sample [N], for per-task logging;
        n_tokens: number of target tokens (0-dim long tensor)."""
        memory, enc_sample = self.encode(batch)
        logits = self.decode(batch["dec_in"], memory, enc_sample, batch["dec_sample"], batch["dec_positions"])
        target = batch["dec_out"]
        ce = F.cross_entropy(
            logits.float().flatten(0, 1), target.flatten(),
            ignore_index=IGNORE_INDEX, reduction="none",
        )
        valid = target.flatten() != IGNORE_INDEX
        n_tokens = valid.sum()
        sample = batch["dec_sample"].flatten()[valid]
        n = batch["dataset"].shape[0]
        per_sample = torch.zeros(n, device=ce.device).index_add_(0, sample, ce.detach()[valid])
        counts = torch.zeros(n, device=ce.device).index_add_(0, sample, torch.ones_like(ce[valid]))
        return {"loss": ce.sum() / n_tokens, "sample_loss": per_sample / counts, "n_tokens": n_tokens}

    @torch.no_grad()
    def generate(
        self, batch: dict[str, torch.Tensor], bos_id: int, eos_id: int, max_new_tokens: int
    ) -> torch.Tensor:
        """Greedy decoding: long [B, <= max_new_tokens], BOS excluded, EOS included,
        0 (the pad id) after a row's EOS. Stops once every row has emitted EOS.

        Re-runs the decoder over the whole prefix each step; targets are short.
        Call model.eval() first if dropout is on.
        """
        memory, enc_sample = self.encode(batch)
        b = memory.shape[0]
        ids = torch.full((b, 1), bos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        for _ in range(max_new_tokens):
            nxt = self.decode(ids, memory, enc_sample)[:, -1].argmax(-1)
            nxt = nxt.masked_fill(done, 0)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if done.all():
                break
        return ids[:, 1:]

"""One encoder-decoder Transformer for every modality and every objective.

Modality stems turn patches into d_model vectors and the text embedding turns
ids into the same space; past that point the body cannot tell modalities apart
except through a learned modality embedding. The decoder always emits text
(seq2seq); the encoder-only objectives (mlm, mim, contrastive, itm) read the
encoder's states through the tied LM head or the small heads of `heads.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.config import OBJECTIVES
from unimodal.modalities import modality_codes, patch_modalities, text
from unimodal.model.adapter import ViewAdapters
from unimodal.model.config import ModelConfig
from unimodal.model.distill import DistillPlan, distillation, teacher_targets
from unimodal.model.heads import ContrastiveHead, MaskedPatchHead, MatchHead, rank_counts
from unimodal.model.losses import LossTerms
from unimodal.model.transformer import Mask, Stack, attention_kind, attention_mask
from unimodal.tokenize.sequence import IGNORE_INDEX

TEXT = modality_codes()[text.TEXT]
SEQ2SEQ, CONTRASTIVE, ITM = OBJECTIVES.index("seq2seq"), OBJECTIVES.index("contrastive"), OBJECTIVES.index("itm")
DEC_PAD = {"dec_in": 0, "dec_out": IGNORE_INDEX, "dec_sample": -1, "dec_positions": 0}


def stem_input(patches: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Patches in the model's dtype; uint8 pixels (image, video) scaled to [-1, 1].

    The loader ships pixels as uint8, a quarter of the bytes of floats through
    worker handover and host-to-device copies; the scaling happens on device.
    """
    if patches.dtype == torch.uint8:
        return patches.to(dtype).div_(127.5).sub_(1.0)
    return patches.to(dtype)


def view_ids(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each token's view number 2 * sample + view, -1 at padding: what attends and pools together."""
    sample = batch["enc_sample"]
    return torch.where(sample >= 0, 2 * sample + batch["enc_view"], -1)


def slot_means(memory: torch.Tensor, slot: torch.Tensor, n_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean encoder state per slot [n_slots, d] (summed in fp32) of tokens numbered by `slot` [B, L] (-1: none), and the token counts."""
    slot = torch.where(slot >= 0, slot, n_slots).flatten()  # padding into a spare slot
    sums = memory.new_zeros(n_slots + 1, memory.shape[-1], dtype=torch.float32)
    sums.index_add_(0, slot, memory.flatten(0, 1).float())
    counts = torch.zeros(n_slots + 1, device=memory.device).index_add_(
        0, slot, torch.ones_like(slot, dtype=torch.float32)
    )
    return sums[:n_slots] / counts[:n_slots].clamp(min=1).unsqueeze(-1), counts[:n_slots]


def pool_views(memory: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean encoder state of each sample's two views [N, 2, d], and their token counts [N, 2]."""
    n = batch["dataset"].shape[0]
    means, counts = slot_means(memory, view_ids(batch), 2 * n)
    return means.view(n, 2, -1).to(memory.dtype), counts.view(n, 2)


def pool_inputs(memory: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """itm: mean encoder state of each of a view's two inputs [N, 2 views, 2 inputs, d], in modality order.

    A dataset's inputs are keyed by modality, so an itm view's tokens of one
    modality are one input. A view without tokens (a dropped negative), and a
    sample of another objective, get whatever comes out: nothing scores them.
    """
    n, m = batch["dataset"].shape[0], len(modality_codes())
    views = view_ids(batch)
    means, counts = slot_means(memory, torch.where(views >= 0, views * m + batch["modality"], -1), 2 * n * m)
    means, counts = means.view(n, 2, m, -1), counts.view(n, 2, m)
    modality = torch.arange(m, device=memory.device)
    present = torch.sort(torch.where(counts > 0, modality, m), dim=-1).values[..., :2].clamp(max=m - 1)
    return means.gather(2, present.unsqueeze(-1).expand(-1, -1, -1, means.shape[-1])).to(memory.dtype)


def scored_items(batch: dict[str, torch.Tensor], gather_pairs: bool) -> dict:
    """What each encoder-only objective scores: flat [B * L] positions, patch rows, sample numbers.

    Found before the encoder runs: finding them waits for the device (a
    host sync), which here waits for the batch's copy only, not for the
    encoder. With `gather_pairs`, the ranks' contrastive pair counts are
    gathered here too, as every rank must agree on them, every step, whatever
    its batch holds.
    """
    masked, modality = batch["enc_masked"].flatten(), batch["modality"].flatten()
    # a masked token of a seq2seq sample is a hallucination token (OS-MD, unimodal/model/distill.py), not an mlm item
    seq2seq = (batch["objective"] == SEQ2SEQ)[batch["enc_sample"].clamp(min=0)].flatten()
    items: dict = {"mlm": (masked & (modality == TEXT) & ~seq2seq).nonzero().squeeze(1)}
    items["hallucinated"] = (masked & seq2seq).view_as(batch["enc_masked"])
    for m in patch_modalities():
        of_m = modality == modality_codes()[m]
        items[f"mim_{m}"] = (masked & of_m).nonzero().squeeze(1)
        items[f"rows_{m}"] = masked[of_m].nonzero().squeeze(1)  # the same patches as rows of patches_<m>
    items["contrastive"] = (batch["objective"] == CONTRASTIVE).nonzero().squeeze(1)
    items["itm"] = (batch["objective"] == ITM).nonzero().squeeze(1)
    n_pairs = len(items["contrastive"])
    items["pair_counts"] = rank_counts(n_pairs, masked.device) if gather_pairs else [n_pairs]
    return items


def decoder_inputs(batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The dec_* tensors, and how many memory positions the decoder reads.

    A batch without seq2seq samples still runs the decoder, on one padding
    position against one memory position, so that its parameters are in the
    graph (at almost no cost); the memory is sliced either way, so every rank
    builds the same graph whatever its batch holds.
    """
    dec = {k: batch[k] for k in DEC_PAD}
    if dec["dec_in"].shape[1]:
        return dec, batch["enc_sample"].shape[1]
    return {k: v.new_full((v.shape[0], 1), DEC_PAD[k]) for k, v in dec.items()}, 1


class UnifiedModel(nn.Module):
    """Encoder over mixed-modality tokens, text decoder with a tied LM head, heads for the other objectives."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        # LayerNorm first: raw pixels, mel bins and video patches live on different scales.
        self.stems = nn.ModuleDict(
            {
                m: nn.Sequential(nn.LayerNorm(cfg.patch_dims[m]), nn.Linear(cfg.patch_dims[m], d))
                for m in patch_modalities()
            }
        )
        self.mod_emb = nn.Embedding(len(modality_codes()), d)
        self.enc_pos = nn.Embedding(cfg.max_positions, d)
        self.dec_pos = nn.Embedding(cfg.max_positions, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = Stack(cfg, cfg.enc_layers, decoder=False)
        self.decoder = Stack(cfg, cfg.dec_layers, decoder=True)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.mask_emb = nn.Parameter(torch.zeros(d))  # what a masked token (mlm, mim) shows the encoder
        self.mim = MaskedPatchHead(d, cfg.patch_dims)
        self.contrastive = ContrastiveHead(d)
        # contrastive adaptation (unimodal/model/adapter.py): identity, no parameters, without one
        self.adapter = ViewAdapters(d, cfg.adapter_dim) if cfg.adapter_dim else nn.Identity()
        # a run without contrastive datasets sets this False (unimodal/train/loop.py): one collective a step less
        self.gather_pairs = True
        # OS-MD's terms per dataset, set from the recipe (unimodal/train/loop.py); None: no dataset learns from privileged inputs
        self.distill: DistillPlan | None = None
        self.itm = MatchHead(d)
        self.apply(self._init)
        nn.init.normal_(self.mask_emb, std=0.02)
        if cfg.adapter_dim:
            self.adapter.reset_parameters()

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def mask(self, query_sample: torch.Tensor, key_sample: torch.Tensor, causal: bool = False) -> Mask:
        """The attention mask of `cfg.attention` on this device (unimodal/model/transformer.py)."""
        kind = attention_kind(self.cfg, query_sample.device)
        return attention_mask(query_sample, key_sample, causal, kind, self.cfg.attention_block)

    def encode(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder output [B, L, d] and each token's sample number [B, L] (-1 at padding).

        Each view of a sample is encoded alone; masked tokens show the mask embedding.
        """
        modality = batch["modality"]
        x = self.tok_emb(batch["enc_ids"])
        for m in patch_modalities():
            # x has the weights' dtype (fp32, or bf16 under DeepSpeed); autocast may
            # return bf16 rows. The stem runs even on zero rows so every parameter
            # is in the graph (DDP/ZeRO expect a gradient for each, even if zero).
            rows = self.stems[m](stem_input(batch[f"patches_{m}"], x.dtype)).to(x.dtype)
            at = (modality == modality_codes()[m]).unsqueeze(-1)
            x = x.masked_scatter(at, rows)  # fills rows in row-major [B, L] order
        x = torch.where(batch["enc_masked"].unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        x = x + self.mod_emb(modality) + self.enc_pos(batch["positions"])
        views = view_ids(batch)
        return self.encoder(self.drop(x), self.mask(views, views)), batch["enc_sample"]

    def decoder_states(
        self,
        dec_in: torch.Tensor,
        memory: torch.Tensor,
        enc_sample: torch.Tensor,
        dec_sample: torch.Tensor | None = None,
        dec_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The decoder's final states [B, T, d] for every prefix of each sample's dec_in (logits: lm_head).

        Without `dec_sample`, each row is one sample: the one its encoder row holds.
        """
        if dec_sample is None:
            dec_sample = enc_sample[:, :1].expand(-1, dec_in.shape[1])
            dec_positions = torch.arange(dec_in.shape[1], device=dec_in.device)
        x = self.drop(self.tok_emb(dec_in) + self.dec_pos(dec_positions))
        return self.decoder(
            x, self.mask(dec_sample, dec_sample, causal=True), memory, self.mask(dec_sample, enc_sample)
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every objective's loss on its own samples (see `losses.py`):

        loss: the sum over objectives of each one's mean (what we train on);
        sample_loss: detached mean loss per sample [N], for per-task logging;
        n_tokens: tokens predicted through the LM head (seq2seq targets, mlm's masked tokens).

        With several ranks, forward is collective: every rank calls it together
        (the ranks' contrastive pair counts are gathered at every call).
        """
        items = scored_items(batch, self.gather_pairs)
        memory, _ = self.encode(batch)
        terms = LossTerms(batch["dataset"].shape[0], memory.device)
        n_tokens = self._predict_tokens(batch, items, memory, terms)
        if self.distill is not None:
            self._learn_from_privileged(batch, items, memory, terms)
        self._regress_patches(batch, items, memory, terms)
        self._compare_views(batch, items, memory, terms)
        return {"loss": terms.loss, "sample_loss": terms.sample_loss(), "n_tokens": n_tokens}

    def _predict_tokens(self, batch: dict, items: dict, memory: torch.Tensor, terms: LossTerms) -> torch.Tensor:
        """seq2seq (decoder states) and mlm (masked text tokens' encoder states): one pass through the tied LM head."""
        enc_sample = batch["enc_sample"]
        dec, span = decoder_inputs(batch)
        read = torch.where(
            batch["enc_view"] == 0, enc_sample, -1
        )  # view 1 of a seq2seq sample: privileged, training only
        states = self.decoder_states(
            dec["dec_in"], memory[:, :span], read[:, :span], dec["dec_sample"], dec["dec_positions"]
        )
        at = items["mlm"]
        labels = torch.cat([dec["dec_out"].flatten(), batch["enc_ids"].flatten()[at]])
        owner = torch.cat([dec["dec_sample"].flatten(), enc_sample.flatten()[at]])
        owner = torch.where(labels != IGNORE_INDEX, owner, -1)
        if self.distill is not None:  # a `hallucinate` stage trains no CE through the hallucinated features
            student = self.distill.of_samples(batch["dataset"])[0]
            owner = torch.where(student[owner.clamp(min=0)], owner, -1)
        logits = self.lm_head(torch.cat([states.flatten(0, 1), memory.flatten(0, 1)[at]]))
        ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        k = states.shape[0] * states.shape[1]
        terms.add(ce[:k], owner[:k])
        terms.add(ce[k:], owner[k:])
        return (owner >= 0).sum()

    def _learn_from_privileged(self, batch: dict, items: dict, memory: torch.Tensor, terms: LossTerms) -> None:
        """OS-MD's teacher CE (ordinary + real privileged features) and distillation (unimodal/model/distill.py)."""
        _, teacher, weight = self.distill.of_samples(batch["dataset"])
        dec, span = decoder_inputs(batch)
        queries, owner = teacher_targets(dec, teacher)
        read = torch.where(items["hallucinated"], -1, batch["enc_sample"])[:, :span]
        states = self.decoder_states(dec["dec_in"], memory[:, :span], read, queries, dec["dec_positions"])
        labels = dec["dec_out"].flatten()
        ce = F.cross_entropy(
            self.lm_head(states.flatten(0, 1)).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        terms.add(ce, owner)
        terms.add(*distillation(memory, batch, items["hallucinated"], weight))

    def _regress_patches(self, batch: dict, items: dict, memory: torch.Tensor, terms: LossTerms) -> None:
        """mim: each masked patch's encoder state against its pixels."""
        states = {m: memory.flatten(0, 1)[items[f"mim_{m}"]] for m in patch_modalities()}
        pixels = {m: stem_input(batch[f"patches_{m}"][items[f"rows_{m}"]], torch.float32) for m in patch_modalities()}
        owner = torch.cat([batch["enc_sample"].flatten()[items[f"mim_{m}"]] for m in patch_modalities()])
        terms.add(self.mim(states, pixels), owner)

    def _compare_views(self, batch: dict, items: dict, memory: torch.Tensor, terms: LossTerms) -> None:
        """contrastive, on each sample's two mean-pooled views; itm, on each view's two mean-pooled inputs."""
        pooled, sizes = pool_views(memory, batch)
        pairs = items["contrastive"]
        adapted = self.adapter(pooled[pairs])
        terms.add(self.contrastive(adapted[:, 0], adapted[:, 1], items["pair_counts"]), pairs)
        itm = items["itm"]
        matched = torch.tensor([True, False], device=itm.device).repeat(len(itm))  # view 0 matched, view 1 not
        owner = torch.where(sizes[itm].flatten() > 0, itm.repeat_interleave(2), -1)  # a dropped negative has no tokens
        terms.add(self.itm(pool_inputs(memory, batch)[itm].flatten(0, 1), matched), owner)

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit vectors [N, 2, d] of each sample's two views, as the contrastive loss compares them."""
        memory, _ = self.encode(batch)
        return self.contrastive.embed(self.adapter(pool_views(memory, batch)[0]))

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor], bos_id: int, eos_id: int, max_new_tokens: int) -> torch.Tensor:
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
            nxt = self.lm_head(self.decoder_states(ids, memory, enc_sample)[:, -1]).argmax(-1)
            nxt = nxt.masked_fill(done, 0)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if done.all():
                break
        return ids[:, 1:]

"""One encoder-decoder Transformer for every modality and every objective.

Modality stems turn patches into d_model vectors and the text embedding turns
ids into the same space; past that point the body cannot tell modalities apart
except through a learned modality embedding. The decoder always emits text
(seq2seq); the encoder-only objectives (mlm, mim, contrastive, itm) read the
encoder's states through the tied LM head or their own heads. What each
objective adds (heads, the items it scores, its loss) comes from its record in
the objective registry (unimodal/objectives/), in registration order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unimodal.modalities import modality_codes, patch_modalities
from unimodal.model.config import ModelConfig
from unimodal.model.distill import DistillPlan, distillation, teacher_targets
from unimodal.model.losses import LossTerms
from unimodal.model.transformer import Mask, Stack, attention_kind, attention_mask
from unimodal.objectives import objective_code, objectives
from unimodal.objectives.reading import stem_input, view_ids
from unimodal.objectives.seq2seq import IGNORE_INDEX, SEQ2SEQ, decoder_inputs


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
        # every registered objective's heads, by the attribute names its record gives (unimodal/objectives/)
        heads = [(name, make(cfg)) for o in objectives() for name, make in o.heads.items()]
        for name, head in heads:
            setattr(self, name, head)
        # the names batch["modality"] indexes ("pad", then each modality): the objectives read the codes through this
        self.modalities = tuple(modality_codes())
        # a run without contrastive datasets sets this False (unimodal/train/loop.py): one collective a step less
        self.gather_pairs = True
        # OS-MD's terms per dataset, set from the recipe (unimodal/train/loop.py); None: no dataset learns from privileged inputs
        self.distill: DistillPlan | None = None
        self.apply(self._init)
        nn.init.normal_(self.mask_emb, std=0.02)
        for _, head in heads:  # a head's own init, after the model's (the contrastive adapter starts as the identity)
            if hasattr(head, "reset_parameters"):
                head.reset_parameters()

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

        Each objective finds what it scores before the encoder runs: finding
        them waits for the device (a host sync), which there waits for the
        batch's copy only, not for the encoder. With several ranks, forward is
        collective: every rank calls it together (the ranks' contrastive pair
        counts are gathered at every call, unless `gather_pairs` is off).
        """
        items = {o.name: o.items(self, batch) for o in objectives() if o.items is not None}
        memory, _ = self.encode(batch)
        terms = LossTerms(batch["dataset"].shape[0], memory.device)
        n_tokens = self._predict_tokens(batch, items, memory, terms)
        if self.distill is not None:
            self._learn_from_privileged(batch, memory, terms)
        for o in objectives():
            if o.loss is not None:
                o.loss(self, batch, items.get(o.name), memory, terms)
        return {"loss": terms.loss, "sample_loss": terms.sample_loss(), "n_tokens": n_tokens}

    def _predict_tokens(self, batch: dict, items: dict, memory: torch.Tensor, terms: LossTerms) -> torch.Tensor:
        """The objectives' rows through the tied LM head (seq2seq's decoder states, mlm's masked tokens' encoder
        states): one pass, then each objective's cross-entropy added as its own term, in registration order."""
        rows = [o.lm_rows(self, batch, items.get(o.name), memory) for o in objectives() if o.lm_rows is not None]
        states, labels, owner = (torch.cat(parts) for parts in zip(*rows))
        logits = self.lm_head(states)
        ce = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX, reduction="none")
        start = 0
        for _, _, owner_rows in rows:
            terms.add(ce[start : start + len(owner_rows)], owner_rows)
            start += len(owner_rows)
        return (owner >= 0).sum()

    def _learn_from_privileged(self, batch: dict, memory: torch.Tensor, terms: LossTerms) -> None:
        """OS-MD's teacher CE (ordinary + real privileged features) and distillation (unimodal/model/distill.py)."""
        _, teacher, weight = self.distill.of_samples(batch["dataset"])
        dec, span = decoder_inputs(batch)
        queries, owner = teacher_targets(dec, teacher)
        # a masked token of a seq2seq sample is a hallucination token, not an mlm item
        seq2seq = (batch["objective"] == objective_code(SEQ2SEQ))[batch["enc_sample"].clamp(min=0)]
        hallucinated = batch["enc_masked"] & seq2seq
        read = torch.where(hallucinated, -1, batch["enc_sample"])[:, :span]
        states = self.decoder_states(dec["dec_in"], memory[:, :span], read, queries, dec["dec_positions"])
        labels = dec["dec_out"].flatten()
        ce = F.cross_entropy(
            self.lm_head(states.flatten(0, 1)).float(), labels, ignore_index=IGNORE_INDEX, reduction="none"
        )
        terms.add(ce, owner)
        terms.add(*distillation(memory, batch, hallucinated, weight))

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

    @torch.no_grad()
    def beam_search(
        self, batch: dict[str, torch.Tensor], bos_id: int, eos_id: int, max_new_tokens: int, beams: int
    ) -> tuple[torch.Tensor, float]:
        """Beam search over a batch of one sample: (long [<= max_new_tokens], BOS excluded, EOS included
        if reached; its log-probability under the model, EOS included).

        Each step extends every live hypothesis by every token and ranks the extensions by total
        log-probability; going down that ranking, an EOS among the first `beams` ends a hypothesis
        (it joins the finished ones) and the first `beams` others stay live (the 2 x beams best
        always hold that many: each hypothesis has one EOS). A hypothesis still live after
        `max_new_tokens` tokens finishes as it stands, as greedy decoding's do.

        Length: hypotheses are ranked by their total log-probability, not normalised by length:
        the answer is the most probable text the beam has seen, EOS included. Each token adds a
        log-probability <= 0, so a live hypothesis can only lose: the search stops as soon as the
        best finished one scores at least as high as every live one, and it is the answer. (A
        length penalty would favour longer texts; the targets here, captions, transcripts and
        labels, are short and need none.) With beams=1 this is `generate`'s greedy decoding exactly.
        Each step re-runs the decoder over the whole prefix, as `generate` does.
        """
        memory, enc_sample = self.encode(batch)
        if memory.shape[0] != 1 or beams < 1:
            raise ValueError(f"beam_search takes one sample and beams >= 1, not {memory.shape[0]} and {beams}")
        ids = torch.full((1, 1), bos_id, dtype=torch.long, device=memory.device)
        scores = torch.zeros(1, device=memory.device)  # the live hypotheses' log-probabilities
        finished: list[tuple[float, torch.Tensor]] = []
        for _ in range(max_new_tokens):
            k = ids.shape[0]
            states = self.decoder_states(ids, memory.expand(k, -1, -1), enc_sample.expand(k, -1))
            total = scores[:, None] + self.lm_head(states[:, -1]).float().log_softmax(-1)
            top, flat = total.flatten().topk(min(2 * beams, total.numel()))
            origin, token = flat // total.shape[1], flat % total.shape[1]
            grown = torch.cat([ids[origin], token[:, None]], dim=1)
            ends = token == eos_id
            finished += [(top[r].item(), grown[r, 1:]) for r in range(min(beams, len(top))) if ends[r]]
            live = (~ends).nonzero().flatten()[:beams]
            ids, scores = grown[live], top[live]
            if finished and max(f[0] for f in finished) >= scores.max().item():
                break
        else:
            finished += [(s, row[1:]) for s, row in zip(scores.tolist(), ids)]
        score, best = max(finished, key=lambda f: f[0])
        return best, score

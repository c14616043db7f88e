"""Text tokenizer: SentencePiece, trained here on the user's own text.

Ids 0-3 are fixed (pad, unk, bos, eos) so that batches can be padded with 0
without looking the tokenizer up. Digits are split so that numbers are
spelled digit by digit, which is how a small model learns to copy them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
import webdataset as wds

from unimodal.config import expand_shards
from unimodal.fields import member, unzipped
from unimodal.modalities import BadSample

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
CONTROL_TOKENS = ("<sep>", "<mask>")


class TextTokenizer:
    """A thin wrapper that fixes the special ids and the target format."""

    def __init__(self, model_path: str | Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        if (self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()) != (PAD_ID, BOS_ID, EOS_ID):
            raise ValueError(f"{model_path}: not a unimodal tokenizer (special ids differ)")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if i == EOS_ID:
                break
            if i > EOS_ID:
                out.append(int(i))
        return self.sp.decode(out)


def shard_texts(patterns: list[str]) -> Iterator[str]:
    """Every `.txt` member and every string value of `.json` members, gzipped ones too (no decoding of anything else)."""
    urls = [u for p in patterns for u in expand_shards(p)]
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        for field in sample:
            ext = unzipped(field).rsplit(".", 1)[-1]
            try:
                if ext == "txt":
                    yield member(sample, field).decode("utf-8").strip()
                elif ext == "json":
                    yield from _json_strings(json.loads(member(sample, field)))
            except BadSample:  # a gzip member that is corrupt or too large: training skips it too
                continue


def _json_strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _json_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _json_strings(v)


def train_text_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 1024) -> Path:
    """Train SentencePiece on `texts`; writes OUT_DIR/sp.model and returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t for t in texts if t),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora have fewer pieces than asked for
        model_type="bpe",  # unigram under-fills the vocabulary on small corpora
        character_coverage=1.0,
        split_digits=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        user_defined_symbols=list(CONTROL_TOKENS),
        minloglevel=2,
    )
    path = out_dir / "sp.model"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(model.getvalue())
    tmp.replace(path)
    return path

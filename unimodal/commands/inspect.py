"""`unimodal data inspect`: read shards as training would, and say what is in them.

    unimodal data inspect 'data/mine/shard-{000000..000009}.tar' [--json] [--samples] [--limit N]

Before a run spends hours on a dataset, this reads every shard with the loader's
own reader (`stream.read_shard`) and every member with the loader's own
decoders (`decode.decode_field`, default tokenizer settings), so "decodes here"
means "decodes in training". It reports samples and fields, decode failures per
field, the samples that would be skipped and why (here: any member that does not
decode; training skips a sample only for the fields its recipe reads), broken
shards, and examples to look at. Pickle members (.pyd, .pkl, ...) are counted,
never decoded. `--samples` lists every member's size and SHA-256, to compare
shards byte for byte with their sources.

It is a report: the exit status is 0 however bad the data; 2 only when a
pattern names no file.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimodal.config import REMOTE_PREFIXES, TokenizerConfig, expand_shards
from unimodal.data.decode import BadSample, decode_field
from unimodal.data.stream import BrokenShard, read_shard
from unimodal.fields import member, modality_of, suffix, unzipped
from unimodal.modalities import PICKLED

EXAMPLES = 20


class NoShards(ValueError):
    """A shard pattern that names no file."""


def shard_urls(patterns: list[str]) -> list[str]:
    """Brace-expanded URLs; a local path that is not a file is tried as a glob."""
    urls = []
    for pattern in patterns:
        for url in expand_shards(pattern):
            if url.startswith(REMOTE_PREFIXES) or Path(url).is_file():
                found = [url]
            else:
                found = sorted(path for path in glob.glob(url) if Path(path).is_file())
            if not found:
                raise NoShards(f"{url}: no such shard" + (f" (from {pattern})" if url != pattern else ""))
            urls += found
    return urls


def defaults() -> TokenizerConfig:
    """Every modality's default settings, for decoding (the text model is not read)."""
    return TokenizerConfig(text=Path("unused"))


def decode_member(raw: dict[str, Any], ext: str) -> str | None:
    """Decode one member as training would: None if it decodes, else the reason it does not."""
    try:
        if suffix(unzipped(ext)) == "json":
            json.loads(member(raw, ext))
        else:
            decode_field(raw, ext, modality_of(ext), defaults())
    except BadSample as err:
        return err.reason
    except ValueError:  # json.loads: not JSON, or not UTF-8
        return "undecodable json"
    return None


@dataclass
class Report:
    """Counts over the samples read so far."""

    listing: bool = False  # keep every sample's member sizes and hashes
    shards: int = 0
    samples: int = 0
    fields: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    not_decoded: Counter[str] = field(default_factory=Counter)
    pickled: Counter[str] = field(default_factory=Counter)
    broken: list[dict[str, str]] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)
    per_sample: list[dict[str, Any]] = field(default_factory=list)

    def add(self, url: str, raw: dict[str, Any]) -> None:
        self.samples += 1
        members = sorted(ext for ext in raw if not ext.startswith("__"))
        reasons = []
        for ext in members:
            self.fields[ext] += 1
            if suffix(ext) in PICKLED:
                self.pickled[ext] += 1
            elif modality_of(ext) is None:
                self.not_decoded[ext] += 1
            elif reason := decode_member(raw, ext):
                self.failed[ext] += 1
                reasons.append(reason)
        reason = reasons[0] if reasons else None
        if reason:
            self.skipped[reason] += 1
            if len(self.examples) < EXAMPLES:
                self.examples.append({"shard": url, "key": raw["__key__"], "reason": reason})
        if self.listing:
            hashed = {ext: {"bytes": len(raw[ext]), "sha256": hashlib.sha256(raw[ext]).hexdigest()} for ext in members}
            self.per_sample.append({"key": raw["__key__"], "shard": url, "fields": hashed, "skipped": reason})

    def as_dict(self) -> dict[str, Any]:
        report = {
            "shards": self.shards,
            "samples": self.samples,
            "skipped": sum(self.skipped.values()),
            "fields": {ext: {"count": n, "failed": self.failed[ext]} for ext, n in sorted(self.fields.items())},
            "skip_reasons": dict(self.skipped.most_common()),
            "not_decoded": dict(sorted(self.not_decoded.items())),
            "not_decoded_pickle": dict(sorted(self.pickled.items())),
            "broken_shards": self.broken,
            "examples": self.examples,
        }
        if self.listing:
            report["per_sample"] = self.per_sample
        return report


def inspect_shards(urls: list[str], limit: int | None = None, listing: bool = False) -> dict[str, Any]:
    """Read `urls` in order (stopping after `limit` samples); the report as plain data."""
    report = Report(listing=listing)
    for url in urls:
        if limit is not None and report.samples >= limit:
            break
        report.shards += 1
        try:
            for raw in read_shard(url):
                report.add(url, raw)
                if limit is not None and report.samples >= limit:
                    break
        except BrokenShard as err:
            report.broken.append({"url": url, "error": str(err)})
    return report.as_dict()


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for a terminal."""
    lines = [
        f"{report['shards']} shards read, {len(report['broken_shards'])} broken; "
        f"{report['samples']} samples, {report['skipped']} skipped",
        "",
        f"{'field':<16}{'samples':>9}{'failed':>9}  note",
    ]
    notes = {ext: "not decoded" for ext in report["not_decoded"]}
    notes |= {ext: "not decoded (pickle)" for ext in report["not_decoded_pickle"]}
    for ext, counts in report["fields"].items():
        note = notes.get(ext, "")
        lines.append(f"{ext:<16}{counts['count']:>9}{counts['failed']:>9}  {note}".rstrip())
    if report["skip_reasons"]:
        lines += ["", "skipped:"] + [f"  {n:>7}  {reason}" for reason, n in report["skip_reasons"].items()]
    if report["broken_shards"]:
        lines += ["", "broken shards:"] + [f"  {b['error']}" for b in report["broken_shards"]]
    if report["examples"]:
        lines += ["", "examples (shard, key, reason):"]
        lines += [f"  {e['shard']}  {e['key']}  {e['reason']}" for e in report["examples"]]
    return "\n".join(lines)

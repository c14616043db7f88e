"""Which samples each rank trained on, step by step: an audit of the data split.

With `logging.sample_log: true` every rank writes OUTPUT_DIR/samples/rank<R>.jsonl,
one line per micro-batch: `{"step", "keys", "epochs", "trained"}` ("dataset/key"
names and the stream epoch each sample came from; `trained` is false for a
batch skipped for a non-finite loss). With it one can check that a multi-node
job read every sample once per epoch, or find the batch behind a loss spike.

Lines are flushed with each checkpoint. A resumed run first drops the lines of
steps after its checkpoint (the killed run's, which it trains again), so the
file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class SampleLog:
    def __init__(self, out_dir: Path, rank: int, step: int, enabled: bool):
        self.file = None
        if not enabled:
            return
        path = out_dir / "samples" / f"rank{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if step and path.is_file():
            lines = path.read_text().splitlines(keepends=True)  # a kill can leave the last one cut short
            kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, path)
        self.file = open(path, "w" if not step else "a")  # noqa: SIM115 (open for the run; closed by close())

    def add(self, step: int, meta: dict, trained: bool) -> None:
        """Record a micro-batch of `step` (counted from 1)."""
        if self.file:
            self.file.write(
                json.dumps({"step": step, "keys": meta["keys"], "epochs": meta["epochs"], "trained": trained}) + "\n"
            )

    def flush(self) -> None:
        if self.file:
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file:
            self.file.close()

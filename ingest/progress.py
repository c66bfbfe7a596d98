"""Progress bars per stage (tqdm, rate and ETA) and the end-of-run summary."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from clipsearch.schema import display_text


# What `slowest_stage` compares: the work of a run. Setup (open, load_model) is timed but is not a
# stage, and decode_wait is the runner waiting for the decode stage, not work of its own.
STAGES = ("download", "scan", "read", "cache", "decode", "encode", "write", "save")


class Progress:
    """One tqdm bar per stage, created on first use. Silent when quiet or not on a terminal."""

    def __init__(self, enabled: bool | None = None):
        # None: tqdm decides (bars on a terminal, nothing in logs and pipes).
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def bar(self, stage: str, total: int | None = None):
        if stage not in self._bars:
            from tqdm import tqdm

            disable = None if self.enabled is None else not self.enabled
            self._bars[stage] = tqdm(total=total, desc=f"{stage:>8}", unit="img", position=len(self._bars),
                                     disable=disable, file=sys.stderr, dynamic_ncols=True, leave=True)
        elif total is not None:
            self._bars[stage].total = total
        return self._bars[stage]

    def update(self, stage: str, n: int = 1) -> None:
        if n:
            self.bar(stage).update(n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@dataclass
class Summary:
    """What a run did. `failed` keeps every (item, reason); the report groups them by reason."""

    source: str
    found: int = 0
    downloaded: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    failed: list[tuple[str, str]] = field(default_factory=list)
    encoded: int = 0
    from_cache: int = 0
    indexed: int = 0
    deleted: int = 0
    index_count: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # run-level problems worked around (a damaged cache)

    def fail(self, key: str, reason: str) -> None:
        # Printed and written as JSON: a file name that is not UTF-8 must not end the run here.
        self.failed.append((display_text(key), display_text(reason)))

    def add_time(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    @property
    def slowest_stage(self) -> str | None:
        """The pipeline stage that took longest (one-off setup such as opening the index or
        loading the model is timed too, but is not a stage)."""
        busy = {k: v for k, v in self.stage_seconds.items() if k in STAGES}
        return max(busy, key=busy.get) if busy else None

    def failure_reasons(self) -> Counter:
        return Counter(reason.split(":", 1)[0] for _, reason in self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "found": self.found, "downloaded": self.downloaded,
            "skipped": dict(self.skipped), "failed": len(self.failed),
            "failures": [{"item": k, "reason": r} for k, r in self.failed],
            "encoded": self.encoded, "from_cache": self.from_cache, "indexed": self.indexed,
            "deleted": self.deleted, "index_count": self.index_count,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "slowest_stage": self.slowest_stage, "total_seconds": round(self.total_seconds, 3),
            "warnings": list(self.warnings),
        }

    def render(self, max_failures: int = 20) -> str:
        lines = [f"ingest {self.source}: {self.found} found"]
        if self.source == "unsplash":
            lines.append(f"  downloaded  {self.downloaded}")
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "0"
        lines += [
            f"  skipped     {skipped}",
            f"  failed      {len(self.failed)}" + (
                " (" + ", ".join(f"{n} {why}" for why, n in self.failure_reasons().most_common()) + ")"
                if self.failed else ""),
            f"  encoded     {self.encoded} (+{self.from_cache} from the embedding cache)",
            f"  indexed     {self.indexed}" + (f", deleted {self.deleted}" if self.deleted else ""),
            f"  index now   {self.index_count} documents",
        ]
        if self.stage_seconds:
            times = ", ".join(f"{k} {v:.1f}s" for k, v in self.stage_seconds.items())
            lines.append(f"  time        {self.total_seconds:.1f}s total; {times}; slowest: {self.slowest_stage}")
        lines += [f"  WARNING {warning}" for warning in self.warnings]
        for key, reason in self.failed[:max_failures]:
            lines.append(f"  FAILED {key}: {reason}")
        if len(self.failed) > max_failures:
            lines.append(f"  ... and {len(self.failed) - max_failures} more failures (--json lists all)")
        return "\n".join(lines)

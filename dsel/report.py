"""Report: the run summary printed at the end of every command and stored in the run table."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from dsel.read import SKIP_HINTS


def kl_text(value: Optional[float]) -> str:
    """A KL reduction as printed, or why there is none (a target none of the selection was chosen for)."""
    return "none chosen" if value is None else f"{value:.4f}"


def record_counts(read: int, skipped: dict[str, int]) -> str:
    """Records read, and the skipped ones by reason."""
    reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(skipped.items()))
    return f"{read:>12,}" + (f"  (skipped {sum(skipped.values()):,}: {reasons})" if skipped else "")


def hint_lines(*skipped: dict[str, int]) -> list[str]:
    """One line per skip reason seen in any of ``skipped`` that has a known fix, with the fix."""
    seen = set().union(*skipped)
    return [f"  hint: {reason}: {SKIP_HINTS[reason]}" for reason in sorted(seen & set(SKIP_HINTS))]


@dataclass
class Summary:
    """What a command read, skipped, kept and wrote, and how long it took."""

    command: str
    run_id: str
    started: float = field(default_factory=time.time)
    read: Optional[int] = None
    skipped: dict[str, int] = field(default_factory=dict)
    target_records: dict[str, dict] = field(default_factory=dict)  # per target fit now: {"read", "skipped"}
    fit_target_records: dict[str, dict] = field(default_factory=dict)  # the same, stored by the fit reused
    scored: Optional[int] = None
    eligible: Optional[int] = None
    filtered: dict[str, int] = field(default_factory=dict)  # scored documents each eligibility filter removed
    selected: Optional[int] = None
    selected_words: Optional[int] = None
    kl_reduction: Optional[float] = None
    kl_smoothing: Optional[float] = None  # the add-one counts' share of the smoothed selection histogram
    kl_own: dict[str, Optional[float]] = field(default_factory=dict)  # several targets: each against its own picks
    featurized: Optional[int] = None  # raw records featurized by this run (the rest were already in OUT/features)
    scored_now: Optional[int] = None  # documents this run scored (the rest kept their weights)
    refit: Optional[str] = None  # why this run fit the histograms again, or None when it reused the fit
    fit_version: Optional[int] = None  # the OUT/log_ratios version the scores and the selection used
    inputs: dict[str, Any] = field(default_factory=dict)  # {"raw": input state, "targets": [states]}
    tables: dict[str, int] = field(default_factory=dict)  # path -> Delta version written
    warnings: list[str] = field(default_factory=list)
    stages: list[tuple[str, float]] = field(default_factory=list)
    finished: Optional[float] = None

    def stage(self, name: str, started: float) -> None:
        """Record a stage's elapsed time and print one progress line."""
        elapsed = time.time() - started
        self.stages.append((name, elapsed))
        print(f"[dsel] {name} done in {elapsed:.1f}s", flush=True)

    def finish(self) -> "Summary":
        self.finished = time.time()
        return self

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def counts(self) -> dict[str, object]:
        return {"read": self.read, "featurized": self.featurized, "skipped": dict(self.skipped), "scored": self.scored,
                "scored_now": self.scored_now, "refit": self.refit, "fit_version": self.fit_version,
                "eligible": self.eligible, "filtered": dict(self.filtered),
                "selected": self.selected, "selected_words": self.selected_words, "kl_reduction": self.kl_reduction,
                "kl_smoothing_share": self.kl_smoothing, "kl_reduction_own": dict(self.kl_own),
                "targets": dict(self.target_records)}

    def format(self) -> str:
        lines = [f"dsel {self.command} — run {self.run_id}"]
        if self.read is not None:
            lines.append(f"  documents read     {self.read:>12,}")
        if self.read is not None or self.skipped:
            total = sum(self.skipped.values())
            reasons = ", ".join(f"{k}={v:,}" for k, v in sorted(self.skipped.items())) or "none"
            lines.append(f"  skipped            {total:>12,}  ({reasons})")
        records, label = ((self.target_records, "target read") if self.target_records
                          else (self.fit_target_records, "target read at fit"))
        targets = records.values()
        if records:
            total: Counter = sum((Counter(t["skipped"]) for t in targets), Counter())
            lines.append(f"  {label:<18} {record_counts(sum(t['read'] for t in targets), total)}")
            if len(records) > 1:
                lines.extend(f"    {name:<16} {record_counts(t['read'], t['skipped'])}" for name, t in records.items())
        lines.extend(hint_lines(self.skipped, *(t["skipped"] for t in targets)))
        if self.featurized is not None and self.featurized != self.read:
            lines.append(f"  featurized now     {self.featurized:>12,}  (the rest were featurized by earlier runs)")
        if self.scored is not None:
            now = (f"  ({self.scored_now:,} scored now, the rest kept their weights)"
                   if self.scored_now is not None and self.scored_now != self.scored else "")
            lines.append(f"  scored             {self.scored:>12,}{now}")
        if self.fit_version is not None:
            why = f"fit now: {self.refit}" if self.refit else "reused"
            lines.append(f"  fit                {'log_ratios v' + str(self.fit_version):>12}  ({why})")
        if self.eligible is not None:
            lines.append(f"  eligible           {self.eligible:>12,}")
        if self.filtered and any(self.filtered.values()):  # the filters that removed some
            reasons = ", ".join(f"{k}={v:,}" for k, v in self.filtered.items() if v)
            lines.append(f"  not eligible       {sum(self.filtered.values()):>12,}  ({reasons})")
        if self.selected is not None:
            words = f"  ({self.selected_words:,} words)" if self.selected_words is not None else ""
            lines.append(f"  selected           {self.selected:>12,}{words}")
        if self.kl_reduction is not None:
            share = (f": {self.kl_smoothing:.0%} of the selection's smoothed counts; a small selection reads low"
                     if self.kl_smoothing is not None and self.kl_smoothing >= 0.005 else "")
            mean = (f"; the mean over {len(self.kl_own)} targets, each against the whole selection"
                    if self.kl_own else "")
            lines.append(f"  KL reduction       {self.kl_reduction:>12.4f}  "
                         f"(hashed n-grams, add-one smoothing{share}{mean})")
        if self.kl_own:
            lines.append("  KL reduction, each target against the documents chosen for it:")
            lines.extend(f"    {name}  {kl_text(value)}" for name, value in self.kl_own.items())
        for path, version in self.tables.items():
            lines.append(f"  wrote {path} (Delta version {version})" if version >= 0 else f"  exported {path}")
        for warning in self.warnings:
            lines.append(f"  WARNING: {warning}")
        lines.append(f"  time               {self.elapsed:>11.1f}s")
        return "\n".join(lines)

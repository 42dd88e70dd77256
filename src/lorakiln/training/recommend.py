"""Which saved file, at which strength: the end-of-run table and its recommendation.

Users pick an epoch file and a strength by reading the epochs × strengths grid (the X/Y plot of
the kohya_ss + AUTOMATIC1111 LoRA walkthrough) by eye. The two signals of every saved file
(file_signals.py) make that choice a rule a reader can check:

    RULE: take the highest grid strength (1.0, 0.9 … 0.5) at which at least one saved file's
    drift is at most `drift_threshold`; among the files under the threshold at that strength,
    take the one with the lowest validation loss (without held-out images: the latest one).

Why this order: drift is the harm (the LoRA bleeding into its class and into unrelated prompts,
what ai-toolkit's output preservation fights) and is gated by a threshold; the validation loss
(SimpleTuner's eval loss) is the benefit, how well the file denoises images of the concept it
never trained on, and is minimised under the gate. Lowering the strength is the user's own remedy
for bleeding (kohya_ss walkthrough), so it is applied only as far as needed, to every file alike,
before giving up likeness. If no file is under the threshold even at the lowest strength, the file
with the least drift there is named, and the reason says so. Pure Python: no torch here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

RULE = ("highest strength (1.0 … 0.5) at which some file's drift ≤ drift_threshold, then the lowest "
        "validation loss among the files under it there (no held-out images: the latest file)")


@dataclass
class FileSignals:
    """The signals of one saved file (`drift`: {strength: score}, empty for full fine-tuning)."""

    file: str
    step: int
    val_loss: float | None
    drift: dict[float, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        row = asdict(self)
        row["drift"] = {str(k): v for k, v in self.drift.items()}
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> FileSignals:
        return cls(str(row["file"]), int(row["step"]), row.get("val_loss"),
                   {float(k): float(v) for k, v in (row.get("drift") or {}).items()})


@dataclass
class Recommendation:
    """The recommended file and strength, the rule, and why this file under it."""

    file: str
    strength: float
    rule: str
    reason: str


def _drift(row: FileSignals, strength: float) -> float:
    return row.drift.get(strength, 0.0) if row.drift else 0.0  # no drift measured (full): no gate


def recommend(rows: list[FileSignals], threshold: float, preserving: bool = False) -> Recommendation | None:
    """The file and strength the module's RULE picks; None without saved files. `preserving`
    (output preservation is on) only changes the advice when no file is under the threshold."""
    if not rows:
        return None
    strengths = sorted({s for r in rows for s in r.drift} or {1.0}, reverse=True)
    for s in strengths:
        under = [r for r in rows if _drift(r, s) <= threshold]
        if not under:
            continue
        with_loss = [r for r in under if r.val_loss is not None]
        if with_loss:
            best = min(with_loss, key=lambda r: (r.val_loss, -r.step))
            why = f"lowest validation loss ({best.val_loss:.5f}) of {len(under)} file(s) with drift ≤ {threshold:g}"
        else:
            best = max(under, key=lambda r: r.step)
            why = f"latest of {len(under)} file(s) with drift ≤ {threshold:g} (no held-out images)"
        if s < strengths[0]:
            why += f"; no file is under the threshold above strength {s:g}"
        return Recommendation(best.file, s, RULE, why)
    low = strengths[-1]
    best = min(rows, key=lambda r: (_drift(r, low), -r.step))
    remedy = ("train less (fewer epochs or a lower U-Net learning rate)" + (
        "; output preservation is on already" if preserving else
        ", or turn on output preservation ([preservation] diff_output_preservation)"))
    return Recommendation(best.file, low, RULE, f"no file has drift ≤ {threshold:g} even at strength {low:g}; "
                          f"this one drifts least there ({_drift(best, low):.4f}): raise drift_threshold to "
                          f"accept more drift, {remedy}")


def table_lines(rows: list[FileSignals], rec: Recommendation | None, threshold: float) -> list[str]:
    """The end-of-run table (file, step, validation loss, drift at 1.0 and at the recommended
    strength) and the recommendation with its rule, as printed."""
    if not rows:
        return []
    s = rec.strength if rec is not None else 1.0
    width = max(len("file"), *(len(r.file) for r in rows))
    extra = f"  drift@{s:g}" if s != 1.0 else ""
    lines = [f"{'file':<{width}}  {'step':>7}  {'val loss':>9}  {'drift@1':>9}{extra}"]
    for r in rows:
        loss = f"{r.val_loss:9.5f}" if r.val_loss is not None else f"{'-':>9}"
        d1 = f"{r.drift[1.0]:9.4f}" if 1.0 in r.drift else f"{'-':>9}"
        ds = (f"  {r.drift[s]:9.4f}" if s in r.drift else f"  {'-':>9}") if extra else ""
        mark = "  <- recommended" if rec is not None and r.file == rec.file else ""
        lines.append(f"{r.file:<{width}}  {r.step:>7}  {loss}  {d1}{ds}{mark}")
    if rec is not None:
        lines.append(f"recommended: {rec.file} at strength {rec.strength:g} — {rec.reason}")
        lines.append(f"rule: {rec.rule} (drift_threshold = {threshold:g})")
    return lines

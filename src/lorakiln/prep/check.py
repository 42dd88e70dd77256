"""`lorakiln dataset check`: one report of everything wrong or notable about a training folder.

It runs exactly what the trainer runs before loading a model — the same scanner (errors that
would stop training), the same lint (`data/lint.py`, printed as warnings by the trainer) and the
same step arithmetic (`training.plan.plan_lines`) — so "check says 1875 steps" and "train
does 1875 steps" cannot disagree.

One run lists every finding. The scan runs inside `scan_common.collect_problems()`, so an
unreadable image or a misnamed folder becomes one error each (with its files) while the scan goes
on: the caption warnings of the same folder, the caption lint and the image measurements of every
image still appear. Only the step arithmetic waits until the errors are fixed. A folder that is
no dataset at all (missing, empty) is one error, and its image files are still measured.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakiln.config.schema import RunConfig
from lorakiln.data.files import list_images, read_caption
from lorakiln.data.lint import Finding, LintOptions, image_findings, lint_dataset
from lorakiln.data.quality import measure_images
from lorakiln.data.scan_common import collect_problems, normalize_caption_extension, paths_named
from lorakiln.errors import LorakilnError

#: The kohya_ss + AUTOMATIC1111 LoRA walkthrough: "your goal is to end up with a step count between 1500 and 2000 for character training".
CHARACTER_STEPS = (1500, 2000)


@dataclass
class CheckReport:
    """All findings plus the numbers (captions, buckets, steps) for one training folder."""

    root: str
    findings: list[Finding] = field(default_factory=list)
    num_images: int = 0
    top_words: list[tuple[str, int]] = field(default_factory=list)
    top_tags: list[tuple[str, int]] = field(default_factory=list)
    num_captions: int = 0
    buckets: dict[str, dict[str, int]] = field(default_factory=dict)
    steps_lines: list[str] = field(default_factory=list)
    total_steps: int | None = None
    epochs: int | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "ok": not self.errors, "num_images": self.num_images,
                "errors": [f.to_dict() for f in self.errors], "warnings": [f.to_dict() for f in self.warnings],
                "info": [f.to_dict() for f in self.findings if f.severity == "info"],
                "top_words": [{"word": w, "images": n} for w, n in self.top_words],
                "top_tags": [{"tag": t, "images": n} for t, n in self.top_tags],
                "num_captions": self.num_captions, "buckets": self.buckets,
                "total_steps": self.total_steps, "epochs": self.epochs, "steps": self.steps_lines}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def format(self) -> str:
        """The text report: errors, warnings, notes, captions, buckets, steps."""
        lines = [f"dataset {self.root}: {self.num_images} image(s), {len(self.errors)} error(s), "
                 f"{len(self.warnings)} warning(s)"]
        order = {"error": 0, "warning": 1, "info": 2}
        for f in sorted(self.findings, key=lambda f: order[f.severity]):  # stable: scan order within each
            lines.append(f"{f.severity.upper():8}[{f.code}] {f.message}")
        if self.top_tags and self.num_captions:
            lines.append(f"most frequent tags (images of {self.num_captions}): "
                         + ", ".join(f"{t} ({n})" for t, n in self.top_tags))
        if self.top_words and self.num_captions:
            every = [w for w, n in self.top_words if n == self.num_captions]
            lines.append("most frequent words: " + ", ".join(f"{w} ({n})" for w, n in self.top_words))
            if every:
                lines.append(f"  in every caption: {', '.join(every)} — traits every image shares are better left "
                             "out of the captions (kohya_ss community advice)")
        if self.buckets:
            lines.append("buckets (width x height: images, samples with repeats):")
            lines += [f"  {b}: {v['images']} image(s), {v['samples']} sample(s)" for b, v in self.buckets.items()]
        lines += self.steps_lines
        return "\n".join(lines)


@contextmanager
def _scan_logs_muted() -> Iterator[None]:
    """The scanners log their soft issues; the report lists them itself, so mute the logs."""
    logs = [logging.getLogger(f"lorakiln.data.{name}") for name in ("scan_common", "layout", "kohya")]
    previous = [log.disabled for log in logs]
    for log in logs:
        log.disabled = True
    try:
        yield
    finally:
        for log, was in zip(logs, previous, strict=True):
            log.disabled = was


def _unusable_folder(report: CheckReport, exc: LorakilnError, cfg: RunConfig, options: LintOptions) -> CheckReport:
    """The folder is no dataset at all: one error, and still the measurements of its images."""
    root = Path(report.root).expanduser()
    report.findings.append(Finding("error", "dataset", str(exc), paths_named(str(exc), root)))
    images = list_images(root)  # a missing folder: none
    report.num_images = len(images)
    if options.check_images and images:  # still measure what is there
        ext = normalize_caption_extension(cfg.data.caption_extension)
        captions = {p: read_caption(p, ext).text or "" for p in images}
        report.findings += image_findings(measure_images(images), options, captions)
    return report


def check_dataset(cfg: RunConfig, *, token: str | None = None, options: LintOptions | None = None) -> CheckReport:
    """Scan, lint and plan `cfg`'s dataset as the trainer would; never raises for dataset problems."""
    from lorakiln.training.plan import build_data, lint_options, plan_lines, plan_steps, scan_training_images

    options = options or lint_options(cfg)
    root = cfg.data.dataset_name or cfg.data.train_data_dir or ""
    report = CheckReport(root=str(root))
    try:
        with _scan_logs_muted(), collect_problems() as problems:
            dataset = scan_training_images(cfg)
    except LorakilnError as exc:
        return _unusable_folder(report, exc, cfg, options)
    report.findings += [Finding("error", "dataset", p.message, p.paths) for p in problems]
    report.root = str(dataset.root)
    report.num_images = dataset.num_images
    report.findings += [Finding("warning", w[0], w[1], getattr(w, "paths", ())) for w in dataset.scan_warnings]
    if cfg.pivotal.train_text_encoder_ti:
        token = token or cfg.pivotal.token_abstraction
    # A failed scan left out its unreadable images and misnamed folders: measure every image file.
    images = list_images(dataset.root) if problems and not cfg.data.dataset_name else None
    lint = lint_dataset(dataset, options, token=token, images=images)
    report.findings += lint.findings
    report.top_words, report.top_tags, report.num_captions = lint.top_words, lint.top_tags, lint.num_captions
    if problems or not dataset.num_images:
        report.steps_lines = ["step arithmetic: shown once the errors above are fixed"]
        return report
    _, data = build_data(cfg, dataset=dataset)
    plan = plan_steps(cfg, data.num_batches_per_epoch)
    images_per_bucket = data.bucket_histogram(repeated=False)
    samples = data.bucket_histogram(repeated=True)
    report.buckets = {f"{b[0]}x{b[1]}": {"images": images_per_bucket[b], "samples": samples[b]}
                      for b in sorted(images_per_bucket)}
    report.steps_lines = plan_lines(cfg, data, plan)
    report.total_steps, report.epochs = plan.total_steps, plan.num_epochs
    low, high = CHARACTER_STEPS
    if not low <= plan.total_steps <= high:
        report.findings.append(Finding("info", "step-count",
                                       f"{plan.total_steps} optimizer steps; the kohya_ss community settings aim at "
                                       f"{low}–{high} for a "
                                       "character (styles take more): change repeats (the folder-name number) "
                                       "or max_train_epochs, or let `lorakiln dataset init --repeats auto` pick them"))
    return report

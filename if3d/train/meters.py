"""Named per-epoch meters of the training loop (torchvision's ``MetricLogger`` idea): every loss term
the model's criterion returns is summed under its own name, never by position in a vector."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EpochMeters"]


@dataclass
class EpochMeters:
    """Running sums of the epoch in progress; saved in mid-epoch checkpoints so a resumed epoch
    reports the same means as an uninterrupted one.

    Attributes:
        sums: name → Σ (batch mean × batch size) over the epoch's steps, for ``loss`` and each
            criterion term.
        correct: training predictions equal to the label.
        samples: training samples seen.
        time_s: wall time of the steps.
        lr_sum, lr_max, steps: learning rate summed and its maximum over the steps, and the step count
            (for the epoch's mean and peak rate).
    """

    sums: dict[str, float]
    correct: float = 0.0
    samples: float = 0.0
    time_s: float = 0.0
    lr_sum: float = 0.0
    lr_max: float = 0.0
    steps: int = 0
    names: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def empty(cls, names: Sequence[str]) -> EpochMeters:
        """Meters for ``names`` (``loss`` and the criterion's terms), all zero."""
        return cls(sums=dict.fromkeys(names, 0.0), names=tuple(names))

    def update(self, totals: Mapping[str, float], correct: float, samples: float, seconds: float, lr: float) -> None:
        """Add one step: ``totals[name]`` is the batch mean × batch size (summed over ranks)."""
        for name in self.names:
            self.sums[name] += float(totals[name])
        self.correct += correct
        self.samples += samples
        self.time_s += seconds
        self.lr_sum += lr
        self.lr_max = max(self.lr_max, lr)
        self.steps += 1

    def mean(self, name: str) -> float:
        """Per-sample mean of ``name`` over the epoch so far (0 before any step)."""
        return self.sums[name] / max(self.samples, 1.0)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.samples, 1.0)

    @property
    def images_per_s(self) -> float:
        return self.samples / max(self.time_s, 1e-9)

    @property
    def lr_mean(self) -> float:
        return self.lr_sum / max(self.steps, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "correct": self.correct, "samples": self.samples, "time_s": self.time_s,
                "lr_sum": self.lr_sum, "lr_max": self.lr_max, "steps": self.steps}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, names: Sequence[str]) -> EpochMeters:
        """Meters saved by :meth:`to_dict` (a name the saved state lacks starts at 0)."""
        meters = cls.empty(names)
        if d:
            meters.sums = {k: float(d["sums"].get(k, 0.0)) for k in names}
            meters.correct, meters.samples, meters.time_s = float(d["correct"]), float(d["samples"]), float(d["time_s"])
            meters.lr_sum, meters.lr_max = float(d.get("lr_sum", 0.0)), float(d.get("lr_max", 0.0))
            meters.steps = int(d.get("steps", 0))
        return meters

"""How the training engine validates a model that is not an expression classifier.

A criterion (:class:`networks.criteria.Criterion`) of a model whose output has no class ``logits`` — a
regression model such as the AU-intensity regressor of :mod:`networks.au` — sets the class attribute
``validation`` to a :class:`ValidationSpec`. The engine then, after every epoch, collects the named outputs
and targets of every validation sample (``if3d.runtime.predict.predict_values``), hands them to
``summarize`` and keeps ``best.pth`` by the ``select`` metric (higher is better). Criteria without it are
validated as expression classifiers (accuracy, balanced accuracy, macro F1, confusion matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ValidationSpec"]


@dataclass(frozen=True)
class ValidationSpec:
    """What to collect on the validation split and how to score it.

    Attributes:
        outputs: attributes of the model's output to collect (``"au"`` → ``results["au_pred"]``, [N, ...]).
        targets: batch targets to collect (``"au"``, ``"au_mask"`` → ``results["au"]``, ``results["au_mask"]``).
        summarize: ``(results, class_names) -> metrics``: a JSON-able dict holding at least every name of
            ``metrics`` as a float; ``results`` also holds ``index`` [N] (dataset order).
        metrics: the metrics logged per epoch (``metrics.csv`` columns ``val_<name>``, TensorBoard ``val/<name>``).
        select: the metric that chooses ``best.pth`` (higher is better); one of ``metrics``.
    """

    outputs: Sequence[str]
    targets: Sequence[str]
    summarize: Callable[[Mapping[str, np.ndarray], Sequence[str]], dict[str, Any]]
    metrics: Sequence[str]
    select: str

    def __post_init__(self) -> None:
        if self.select not in self.metrics:
            raise ValueError(f"the selection metric {self.select!r} is not among the metrics {list(self.metrics)}")

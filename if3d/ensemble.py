"""Score-level fusion of trained models with honest controls (``python -m if3d.ensemble``, ``if3d-ensemble``).

    python -m if3d.ensemble --checkpoints runs/photo/best.pth runs/gate/best.pth --data Dataset/fer2013 \\
        --fit-split calib --test-split test --out runs/ensemble [--method weighted|stack|both]

Every member is any classifier checkpoint of the toolkit (photo, render, landmark, FLAME or fusion models): they
are combined by the registered model ``ensemble`` (:class:`networks.ensemble.ScoreEnsemble`), which reads the union
of the members' inputs, so each split is opened once (:func:`if3d.data.source.open_split`) and every member scores
the same items in the same order through the toolkit's prediction loop (:func:`if3d.runtime.predict_values`).
Items a member cannot score (a photo without a render) stop the command, unless ``--skip-missing-renders`` leaves
them out for every member alike and counts them (``metrics.json``: ``data_report``). Each member's probabilities
carry its own temperature (its checkpoint's ``inference`` entry, ``python -m if3d.calibration``).

What is chosen, and where: the weights of the weighted mean (scipy L-BFGS-B over softmax-parametrised weights,
minimising the fit split's negative log-likelihood, a convex problem in the weights), the stacker (a multinomial
logistic regression on the members' log-probabilities, scikit-learn, its L2 strength C chosen by stratified
cross-validated log loss on the fit split) and the best single member (highest fit-split accuracy, ties by lower
NLL) are all chosen on ``--fit-split``. The test split is only scored. The gain in accuracy of each ensemble over
the best member is given with a paired bootstrap 95 % interval (test items resampled, the same resample for both,
percentile method; :func:`scipy.stats.bootstrap`).

Written to ``--out`` (atomically): ``metrics.json``, ``ensemble.md`` (members and ensembles: accuracy, balanced
accuracy, macro F1, NLL, ECE, the gain over the best member; the inputs of every member and the photo + photo
control, ``docs/ENSEMBLES.md``) and the fitted ensemble as a toolkit checkpoint: ``ensemble.pth`` (``--method
weighted`` or ``stack``) or ``ensemble_weighted.pth`` and ``ensemble_stack.pth`` (``both``: which one is better is
not decided on the test split), loadable by ``affectnet_fusion_test.py --checkpoint`` and ``python -m
if3d.analyze --checkpoint``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from if3d.console import HelpFormatter, command_name, exit_status, one_line_errors, writing_to

if TYPE_CHECKING:  # torch and the data pipeline load when a job runs, not for --help
    import torch

__all__ = ["fit_stacker", "fit_weights", "get_args_parser", "main", "paired_bootstrap_gain", "run", "run_ensemble"]

EXIT_STATUS = {0: "done", 2: "bad options, data, checkpoint, members that disagree on their classes or an unusable "
                            "output folder (one line names it)", 130: "interrupted"}
#: Regularisation strengths C (inverse L2) the stacker's cross-validation chooses from.
STACKER_CS = tuple(float(c) for c in np.logspace(-3, 3, 13))
#: Most cross-validation folds of the stacker (fewer when the fit split's rarest class is smaller).
STACKER_FOLDS = 5
CONTROL_WARNING = ("this ensemble mixes photo and 3D inputs: report it beside a photo + photo ensemble of the same "
                   "size (other seeds or backbones of the photo model) on the same splits; a gain over the best "
                   "single member alone does not show that the 3D input helps (docs/ENSEMBLES.md)")


@dataclass
class Member:
    """One member: its checkpoint, built model, class names and what it reads."""

    path: str
    model: torch.nn.Module
    spec: dict[str, Any]
    class_names: list[str]
    streams: tuple[str, ...]

    @property
    def inputs(self) -> str:
        return " + ".join(self.streams)

    @property
    def photo_only(self) -> bool:
        return self.streams == ("photo",)


def load_members(paths: Sequence[str]) -> list[Member]:
    """Build every member from its checkpoint (one of the toolkit's, ``default`` included).

    Raises:
        ValueError: a file that is not a toolkit checkpoint, or members that disagree on their class names (the
            message names the member that differs).
        plus those of :func:`networks.weights.build_model_from_checkpoint`.
    """
    from if3d.evaluate import label_mapping
    from if3d.runtime import model_streams
    from networks.inference import InferencePolicy
    from networks.weights import build_model_from_checkpoint

    members: list[Member] = []
    for path in paths:
        try:
            model, report = build_model_from_checkpoint(path)
        except pickle.UnpicklingError as e:  # a refused pickle: one line, like every unreadable file
            raise ValueError(f"{path}: {e}") from None
        meta = report.metadata
        names = meta.get("class_names")
        if report.source != "if3d-toolkit" or not isinstance(names, list):
            raise ValueError(f"{path}: an ensemble member must be a toolkit checkpoint (model name, arguments and "
                             f"class names), not a {report.source!r} file; test it with affectnet_fusion_test.py")
        policy = InferencePolicy.from_metadata(meta)
        spec = {"model_name": meta["model_name"], "model_kwargs": dict(meta.get("model_kwargs") or {}),
                **policy.to_dict()}
        member = Member(str(path), model, spec, [str(n) for n in names], model_streams(model))
        if members:
            first = members[0]
            same = len(member.class_names) == len(first.class_names) and label_mapping(
                member.class_names, first.class_names) == {i: i for i in range(len(first.class_names))}
            if not same:
                raise ValueError(f"{path}: its classes ({', '.join(member.class_names)}) differ from those of "
                                 f"{first.path} ({', '.join(first.class_names)}); ensemble members must agree")
        members.append(member)
    return members


def build_ensemble(members: Sequence[Member], method: str = "weighted",
                   weights: Sequence[float] | None = None) -> torch.nn.Module:
    """The registered ``ensemble`` model holding the members' trained modules (eval mode)."""
    import networks

    model = networks.create_model("ensemble", members=[m.spec for m in members],
                                  num_classes=len(members[0].class_names), method=method, weights=weights)
    for i, m in enumerate(members):
        model.members[i].load_state_dict(m.model.state_dict())
    return model.eval()


@dataclass
class ScoredSplit:
    """Every member's calibrated log-probabilities on one split, aligned item by item."""

    name: str
    log_probs: np.ndarray  # [N, M, C] float64
    labels: np.ndarray  # [N] int64, the members' class indices
    excluded: dict[str, int]
    data_report: Any

    def probs(self, m: int) -> np.ndarray:
        p = np.exp(self.log_probs[:, m])
        return p / p.sum(1, keepdims=True)


def score_split(model: torch.nn.Module, class_names: Sequence[str], *, data: str, split: str, image_size: int,
                skip_missing_renders: bool, batch_size: int, workers: int, info: Any, runtime: Any) -> ScoredSplit:
    """Run the ensemble's members on one split (the toolkit's prediction loop) and map its labels by name.

    Raises:
        ValueError: no item of the split belongs to the members' classes, or items lack an input a member reads.
    """
    from if3d.data.source import SplitSource, dataset_report, open_split
    from if3d.evaluate import _remap_results, label_mapping
    from if3d.runtime import BatchPreparer
    from if3d.runtime.predict import predict_values

    dataset = open_split(SplitSource.from_root(data, split), image_size=image_size, streams=model.input_streams,
                         skip_missing_renders=skip_missing_renders)
    data_names = list(dataset.class_names)
    prepare = BatchPreparer.for_model(model, info.device, runtime.channels_last, augment=False, image_size=image_size)
    results = predict_values(model, dataset, prepare, outputs=("member_log_probs",), targets=("label",),
                             batch_size=batch_size, workers=workers, amp=runtime.amp, info=info, desc=split)
    results["label"] = results["label"].astype(np.int64)  # targets come back as float32
    kept, excluded = _remap_results(results, label_mapping(data_names, class_names), data_names)
    if len(kept["label"]) == 0:
        raise ValueError(f"{data} {split}: no item of the members' classes ({', '.join(class_names)})")
    return ScoredSplit(split, kept["member_log_probs_pred"].astype(np.float64), kept["label"].astype(np.int64),
                       excluded, dataset_report(dataset))


def fit_weights(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Weights of the weighted mean minimising the negative log-likelihood on the items given.

    ``w = softmax(a)``, ``NLL(w) = -mean_i log sum_m w_m p_m(y_i | x_i)``; scipy's L-BFGS-B from uniform weights
    with the analytic gradient. The NLL is convex in ``w`` on the simplex, so the optimum does not depend on the
    start.

    Args:
        log_probs: [N, M, C] the members' log-probabilities.
        labels: [N] class indices.

    Returns:
        [M] float64 weights >= 0 summing to 1.
    """
    from scipy.optimize import minimize
    from scipy.special import softmax

    n, m, _ = log_probs.shape
    true = np.exp(log_probs[np.arange(n), :, labels])  # [N, M] each member's probability of the true class

    def objective(a: np.ndarray) -> tuple[float, np.ndarray]:
        w = softmax(a)
        q = np.clip(true @ w, 1e-300, None)
        g = -(true / q[:, None]).mean(0)  # d NLL / d w
        return float(-np.log(q).mean()), w * (g - w @ g)  # chain rule through the softmax

    res = minimize(objective, np.zeros(m), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 1000})
    return softmax(res.x)


def fit_stacker(log_probs: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> dict[str, Any]:
    """A multinomial logistic regression on the members' log-probabilities, C chosen by cross-validation.

    ``sklearn.model_selection.GridSearchCV`` over :data:`STACKER_CS` with stratified, shuffled (``seed``) folds
    (:data:`STACKER_FOLDS`, fewer when the rarest class has fewer items) scored by log loss, then refitted on all
    the items given.

    Args:
        log_probs: [N, M, C]; labels: [N] in [0, C).

    Returns:
        ``{'coef' [C, M*C], 'intercept' [C] (float64 arrays), 'C', 'folds', 'cv_log_loss', 'estimator'}``.

    Raises:
        ValueError: a class has fewer than 2 items (the message names how many each class has).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() < 2:
        raise ValueError(f"the stacker needs at least 2 fit-split items of every class; it has {counts.tolist()} "
                         "(--method weighted needs none)")
    folds = int(min(STACKER_FOLDS, counts.min()))
    search = GridSearchCV(LogisticRegression(max_iter=5000), {"C": list(STACKER_CS)}, scoring="neg_log_loss",
                          cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    search.fit(log_probs.reshape(len(labels), -1), labels)
    clf = search.best_estimator_
    return {"coef": np.asarray(clf.coef_, np.float64), "intercept": np.asarray(clf.intercept_, np.float64),
            "C": float(search.best_params_["C"]), "folds": folds, "cv_log_loss": float(-search.best_score_),
            "estimator": clf}


def paired_bootstrap_gain(correct: np.ndarray, baseline: np.ndarray, resamples: int, seed: int,
                          level: float = 0.95) -> dict[str, Any]:
    """Gain in accuracy of ``correct`` over ``baseline`` with a paired bootstrap interval.

    The test items are resampled with replacement and both predictions are scored on the same resample
    (``scipy.stats.bootstrap(..., paired=True)``, percentile interval; Efron & Tibshirani, "An Introduction to the
    Bootstrap", 1993, ch. 13).

    Args:
        correct, baseline: [N] 0/1 (or bool) per test item.
        resamples: bootstrap resamples; seed: their generator's seed.

    Returns:
        ``{'gain', 'low', 'high', 'level', 'resamples', 'seed'}`` (gain in accuracy, fractions).
    """
    from scipy.stats import bootstrap

    a, b = np.asarray(correct, np.float64), np.asarray(baseline, np.float64)
    gain = float(a.mean() - b.mean())
    if np.array_equal(a, b):  # every resample gives 0; scipy would warn about a degenerate distribution
        low = high = 0.0
    else:
        res = bootstrap((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), paired=True, vectorized=True,
                        n_resamples=resamples, confidence_level=level, method="percentile",
                        rng=np.random.default_rng(seed))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"gain": gain, "low": low, "high": high, "level": level, "resamples": int(resamples), "seed": int(seed)}


def _scores(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    from if3d.metrics import calibration_metrics, classification_metrics

    m = classification_metrics(labels, probs.argmax(1), class_names)
    return {**{k: m[k] for k in ("num_samples", "accuracy", "balanced_accuracy", "f1_macro")},
            **{k: v for k, v in calibration_metrics(probs, labels).items() if k in ("nll", "ece", "brier")}}


def _split_entry(s: ScoredSplit) -> dict[str, Any]:
    return {"split": s.name, "num_samples": int(len(s.labels)), "excluded_samples": s.excluded,
            "data_report": s.data_report}


def run_ensemble(checkpoints: Sequence[str], *, data: str, fit_split: str, test_split: str, out: str | os.PathLike,
                 method: str = "weighted", seed: int = 0, bootstrap: int = 2000, image_size: int | None = None,
                 skip_missing_renders: bool = False, batch_size: int = 64, workers: int = 0, device: str = "auto",
                 command: str | None = None, verbose: bool = True) -> dict[str, Any]:
    """Fit the ensembles on ``fit_split``, score members and ensembles on ``test_split``, write ``out``.

    Args:
        command: the command line, recorded in the outputs (default: this process's arguments).

    Returns:
        The content of ``<out>/metrics.json``.

    Raises:
        ValueError: fewer than two checkpoints, the same split to fit and test, an unknown method, members that
            disagree on classes, or a split the members cannot score (the message says which).
        OSError, FileNotFoundError: unreadable checkpoints or data, an unwritable ``out``.
    """
    import torch

    from if3d.atomic import atomic_write_json, atomic_write_text
    from if3d.checkpoint import make_checkpoint, save_checkpoint
    from if3d.evaluate import _finite_or_none, _prepare_out_dir
    from if3d.runtime import RuntimeConfig, cleanup_distributed, init_distributed, resolve_runtime

    if len(checkpoints) < 2:
        raise ValueError(f"--checkpoints needs at least two members, got {len(checkpoints)}")
    if fit_split == test_split:
        raise ValueError(f"--fit-split and --test-split are both {fit_split!r}: the ensemble would be chosen on the "
                         "split it is reported on")
    if method not in ("weighted", "stack", "both"):
        raise ValueError(f"--method must be weighted, stack or both, got {method!r}")
    out_dir = Path(out)
    _prepare_out_dir(out_dir)
    members = load_members(checkpoints)
    class_names = members[0].class_names
    model = build_ensemble(members)
    spec = getattr(model, "backbone_spec", None)
    size = image_size or (int(spec.input_size) if spec is not None else 112)
    info = init_distributed(device)
    try:
        runtime = resolve_runtime(RuntimeConfig(device=str(info.device)), info.device)
        model = model.to(info.device).eval()
        common = {"data": data, "image_size": size, "skip_missing_renders": skip_missing_renders,
                  "batch_size": batch_size, "workers": workers, "info": info, "runtime": runtime}
        fit = score_split(model, class_names, split=fit_split, **common)
        test = score_split(model, class_names, split=test_split, **common)
    finally:
        cleanup_distributed()
    model = model.cpu()

    rows: list[dict[str, Any]] = []
    for i, m in enumerate(members):
        rows.append({"name": Path(m.path).name if m.path != "default" else "default", "checkpoint": m.path,
                     "inputs": m.inputs, "temperature": m.spec["temperature"], "flip_average": m.spec["flip_average"],
                     "fit": _scores(fit.probs(i), fit.labels, class_names),
                     "test": _scores(test.probs(i), test.labels, class_names)})
    best = max(range(len(members)), key=lambda i: (rows[i]["fit"]["accuracy"], -rows[i]["fit"]["nll"]))
    best_correct = test.probs(best).argmax(1) == test.labels

    ensembles: dict[str, Any] = {}
    methods = ("weighted", "stack") if method == "both" else (method,)
    for name in methods:
        if name == "weighted":
            w = fit_weights(fit.log_probs, fit.labels)
            fitted = build_ensemble(members, "weighted", w.tolist())
            details = {"weights": w.tolist(), "search": "scipy L-BFGS-B over softmax-parametrised weights, "
                       "minimising the fit split's NLL (convex in the weights)"}
        else:
            st = fit_stacker(fit.log_probs, fit.labels, len(class_names), seed)
            fitted = build_ensemble(members, "stack")
            fitted.stack_coef.copy_(torch.as_tensor(st["coef"], dtype=torch.float32))
            fitted.stack_intercept.copy_(torch.as_tensor(st["intercept"], dtype=torch.float32))
            details = {"C": st["C"], "C_grid": list(STACKER_CS), "cv_folds": st["folds"],
                       "cv_log_loss": st["cv_log_loss"], "coef": st["coef"].tolist(),
                       "intercept": st["intercept"].tolist(),
                       "search": "scikit-learn multinomial LogisticRegression on the members' log-probabilities, "
                                 "C by stratified cross-validated log loss on the fit split"}
        scored = {}
        with torch.no_grad():
            for s in (fit, test):
                logits = fitted.combine(torch.as_tensor(s.log_probs, dtype=torch.float32)).double()
                scored[s.name] = torch.softmax(logits, 1).numpy()
        correct = scored[test.name].argmax(1) == test.labels
        file = "ensemble.pth" if len(methods) == 1 else f"ensemble_{name}.pth"
        entry = {"method": name, **details, "checkpoint": file,
                 "fit": _scores(scored[fit.name], fit.labels, class_names),
                 "test": _scores(scored[test.name], test.labels, class_names),
                 "gain_over_best_member": paired_bootstrap_gain(correct, best_correct, bootstrap, seed)}
        ensembles[name] = entry
        kwargs = {"members": [m.spec for m in members], "num_classes": len(class_names), "method": name,
                  "weights": fitted.weights.tolist()}
        provenance = {"members": [m.path for m in members], "data": str(Path(data).resolve().name),
                      "fit_split": fit.name, "method": name}
        ckpt = make_checkpoint(model_name="ensemble", model_kwargs=kwargs, model_state=fitted.state_dict(),
                               class_names=class_names, config={"ensemble": provenance},
                               metrics={"fit": entry["fit"]})
        save_checkpoint(ckpt, out_dir / file)

    mixes_3d = any(not m.photo_only for m in members)
    metrics = {
        "command": command or f"{command_name('python -m if3d.ensemble')} {' '.join(sys.argv[1:])}".strip(),
        "data": str(data), "class_names": class_names, "fit_split": _split_entry(fit),
        "test_split": _split_entry(test), "members": rows,
        "best_member": {"index": best, "checkpoint": members[best].path,
                        "chosen_on": f"{fit.name} (fit split) accuracy, ties by lower NLL"},
        "ensembles": ensembles,
        "control": {"member_inputs": [m.inputs for m in members], "photo_only": not mixes_3d,
                    "warning": CONTROL_WARNING if mixes_3d else None},
        "never_chosen_on_test": ["ensemble weights", "stacker coefficients and C", "best member"],
    }
    atomic_write_json(out_dir / "metrics.json", _finite_or_none(metrics))
    atomic_write_text(out_dir / "ensemble.md", format_table(metrics))
    if verbose:
        print(format_table(metrics), flush=True)
        if mixes_3d:
            print(f"warning: {CONTROL_WARNING}", file=sys.stderr, flush=True)
    return metrics


def format_table(m: dict[str, Any]) -> str:
    """``ensemble.md``: the members and ensembles on the test split, what was chosen where, and the control."""
    fit, test = m["fit_split"], m["test_split"]
    best = m["best_member"]["index"]
    lines = [f"# Score-level ensemble on {Path(m['data']).name}", "",
             f"Fitted on `{fit['split']}` ({fit['num_samples']} items), reported on `{test['split']}` "
             f"({test['num_samples']} items). Weights, stacker and best member are chosen on `{fit['split']}` only.",
             f"Command: `{m['command']}`", "",
             "| entry | inputs | accuracy | balanced accuracy | macro F1 | NLL | ECE | accuracy gain over best member "
             "[95 % CI] |", "|---|---|---:|---:|---:|---:|---:|---|"]

    def row(name: str, inputs: str, t: dict[str, Any], gain: str) -> str:
        return (f"| {name} | {inputs} | {t['accuracy']:.4f} | {t['balanced_accuracy']:.4f} | {t['f1_macro']:.4f} | "
                f"{t['nll']:.4f} | {t['ece']:.4f} | {gain} |")

    for i, r in enumerate(m["members"]):
        tag = " (best on fit split)" if i == best else ""
        lines.append(row(f"member {i}: `{r['name']}`{tag}", r["inputs"], r["test"], "—"))
    inputs = "; ".join(m["control"]["member_inputs"])
    for name, e in m["ensembles"].items():
        g = e["gain_over_best_member"]
        how = ("weights " + ", ".join(f"{w:.3f}" for w in e["weights"])) if name == "weighted" else f"C = {e['C']:g}"
        lines.append(row(f"ensemble `{name}` ({how})", inputs, e["test"],
                         f"{g['gain'] * 100:+.2f} pt [{g['low'] * 100:+.2f}, {g['high'] * 100:+.2f}]"))
    lines += ["", f"Paired bootstrap: {next(iter(m['ensembles'].values()))['gain_over_best_member']['resamples']} "
                  "resamples of the test items, the same resample for the ensemble and the best member.", ""]
    if m["control"]["warning"]:
        lines += [f"**Control missing:** {m['control']['warning']}.", ""]
    else:
        lines += [f"Photo-only ensemble of {len(m['members'])} members: the control for a photo + 3D ensemble of the "
                  "same size on the same splits.", ""]
    return "\n".join(lines)


def _at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its message
    return parse


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("python -m if3d.ensemble"), allow_abbrev=False, formatter_class=HelpFormatter,
        description="Score-level ensemble of trained models: weights or a stacker fitted on one split, members and "
                    "ensembles reported on another with a paired bootstrap interval; writes metrics.json, "
                    "ensemble.md and the ensemble checkpoint.",
        epilog=exit_status(EXIT_STATUS))
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="CKPT",
                   help="two or more toolkit checkpoints of the same classes ('default': the shipped model)")
    p.add_argument("--data", required=True, metavar="ROOT", help="canonical dataset root")
    p.add_argument("--fit-split", required=True, metavar="SPLIT", help="split the ensemble is fitted on")
    p.add_argument("--test-split", required=True, metavar="SPLIT", help="split it is reported on (never fitted on)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=("weighted", "stack", "both"), default="weighted",
                   help="weighted mean of probabilities, logistic-regression stacker, or both")
    p.add_argument("--seed", type=int, default=0, help="seed of the stacker's folds and of the bootstrap")
    p.add_argument("--bootstrap", type=_at_least(1), default=2000, metavar="N", help="paired bootstrap resamples")
    p.add_argument("--image-size", type=_at_least(1), help="side of the input images (default: the members' backbone's, "
                   "else 112)")
    p.add_argument("--skip-missing-renders", action="store_true",
                   help="leave out (and count) items without a render, for every member alike")
    p.add_argument("--batch-size", type=_at_least(1), default=64, help="samples per batch")
    p.add_argument("--workers", type=_at_least(0), default=0, help="data loader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = get_args_parser().parse_args(argv)
    command = " ".join([command_name("python -m if3d.ensemble"), *(sys.argv[1:] if argv is None else argv)])
    return writing_to(args.out, command_name("python -m if3d.ensemble"), lambda: one_line_errors(lambda: run_ensemble(
        args.checkpoints, data=args.data, fit_split=args.fit_split, test_split=args.test_split, out=args.out,
        method=args.method, seed=args.seed, bootstrap=args.bootstrap, image_size=args.image_size,
        skip_missing_renders=args.skip_missing_renders, batch_size=args.batch_size, workers=args.workers,
        device=args.device, command=command) and 0, interrupted="interrupted; the files written so far are whole"))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``if3d-ensemble``; exits with the status."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()

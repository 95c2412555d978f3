"""Tables, plots and paired comparisons of a benchmark sweep.

* ``results.csv``: one row per dataset × model × run (accuracy, balanced accuracy, macro F1 of the
  best-on-validation checkpoint on the run's test part; best epoch, epochs run, times, seed, protocol,
  commit).
* ``summary.md``: FER-crossval's table shape — rows datasets, columns models, ``mean ± std`` over the
  runs (sample standard deviation), the best mean of each row in bold — for accuracy and for balanced
  accuracy; then the paired comparisons.
* ``<dataset>_accuracy.png``: per dataset, the accuracy of every run of every model (strip over box plot).
* Paired comparison of two models on the same splits: the mean of the per-run differences with its 95 %
  confidence interval (Student's t with n − 1 degrees of freedom) and the paired t-test's p-value
  (``scipy.stats.ttest_rel``): a difference is stated only when the interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from if3d.atomic import atomic_write_text

__all__ = ["COLUMNS", "paired_comparison", "plot_runs", "summary_markdown", "write_results"]

COLUMNS = ("dataset", "model", "run", "protocol", "seed", "accuracy", "balanced_accuracy", "f1_macro",
           "val_accuracy_best", "best_epoch", "epochs_run", "stopped_early", "num_test", "train_time_s",
           "wall_time_s", "commit")


def write_results(rows: Sequence[dict], path: str | Path):
    """Write ``results.csv`` (finished runs only, sorted) and return it as a pandas DataFrame."""
    import pandas as pd

    df = pd.DataFrame([r for r in rows if "error" not in r], columns=list(COLUMNS))
    df = df.sort_values(["dataset", "model", "run"]).reset_index(drop=True)
    atomic_write_text(path, df.to_csv(index=False, lineterminator="\n"))
    return df


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else 0.0


def _table(df, metric: str) -> list[str]:
    models = sorted(df["model"].unique())
    lines = [f"| dataset | {' | '.join(models)} |", "|---|" + "---:|" * len(models)]
    for dataset, part in df.groupby("dataset", sort=True):
        cells, means = [], {}
        for m in models:
            v = part.loc[part["model"] == m, metric].to_numpy(dtype=float)
            if v.size:
                means[m] = _mean_std(v)
        best = max(means, key=lambda m: means[m][0]) if means else None
        for m in models:
            if m not in means:
                cells.append("—")
                continue
            mean, std = means[m]
            n = int((part["model"] == m).sum())
            text = f"{mean:.4f} ± {std:.4f} ({n})"
            cells.append(f"**{text}**" if m == best and len(means) > 1 else text)
        lines.append(f"| {dataset} | {' | '.join(cells)} |")
    return lines


def paired_comparison(df, model_a: str, model_b: str, metric: str = "accuracy"):
    """``model_a`` − ``model_b`` per dataset over the runs both finished (same splits, matched by run).

    Returns:
        A DataFrame with ``dataset, n, mean_diff, ci_low, ci_high, t, p, a_wins`` (``ci``: 95 %
        interval of the mean difference; ``t``, ``p``: paired t-test; NaN with fewer than 2 pairs).
    """
    import pandas as pd
    from scipy import stats

    out = []
    for dataset, part in df.groupby("dataset", sort=True):
        a = part[part["model"] == model_a].set_index("run")[metric]
        b = part[part["model"] == model_b].set_index("run")[metric]
        runs = sorted(set(a.index) & set(b.index))
        d = np.asarray([a[r] - b[r] for r in runs], dtype=float)
        n = d.size
        row = {"dataset": dataset, "n": n, "mean_diff": float(d.mean()) if n else math.nan,
               "ci_low": math.nan, "ci_high": math.nan, "t": math.nan, "p": math.nan,
               "a_wins": int((d > 0).sum())}
        if n >= 2:
            sd = d.std(ddof=1)
            half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
            row.update(ci_low=row["mean_diff"] - half, ci_high=row["mean_diff"] + half)
            if sd > 0:
                res = stats.ttest_rel(a[runs].to_numpy(), b[runs].to_numpy())
                row.update(t=float(res.statistic), p=float(res.pvalue))
        out.append(row)
    return pd.DataFrame(out)


def _verdict(row) -> str:
    if row["n"] < 2 or math.isnan(row["ci_low"]):
        return "too few paired runs to say"
    if row["ci_low"] > 0:
        return "A better"
    if row["ci_high"] < 0:
        return "B better"
    return "no difference shown (the interval contains 0)"


def summary_markdown(df, pairs: Sequence[tuple[str, str]] = (), header: Sequence[str] = ()) -> str:
    """``summary.md``: the accuracy and balanced-accuracy tables and the paired comparisons."""
    lines = [*header, "", "## Accuracy (mean ± std over runs, number of runs)", "", *_table(df, "accuracy"), "",
             "## Balanced accuracy", "", *_table(df, "balanced_accuracy"), ""]
    if pairs:
        lines += ["## Paired comparisons (same splits)", "",
                  "| A | B | dataset | runs | A − B accuracy | 95 % interval | paired t-test p | A wins | verdict |",
                  "|---|---|---|---:|---:|---|---:|---:|---|"]
        for a, b in pairs:
            for _, r in paired_comparison(df, a, b).iterrows():
                ci = f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]" if not math.isnan(r["ci_low"]) else "—"
                p = f"{r['p']:.3g}" if not math.isnan(r["p"]) else "—"
                lines.append(f"| {a} | {b} | {r['dataset']} | {r['n']} | {r['mean_diff']:+.4f} | {ci} | {p} | "
                             f"{r['a_wins']}/{r['n']} | {_verdict(r)} |")
        lines.append("")
    return "\n".join(lines)


def plot_runs(df, out_dir: str | Path) -> list[Path]:
    """Per dataset, a strip-over-box plot of every run's test accuracy by model; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from if3d.atomic import atomic_write

    paths = []
    for dataset, part in df.groupby("dataset", sort=True):
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * part["model"].nunique(), 4.0))
        order = sorted(part["model"].unique())
        sns.boxplot(data=part, x="model", y="accuracy", order=order, ax=ax, color="0.9", width=0.5,
                    showfliers=False)
        sns.stripplot(data=part, x="model", y="accuracy", order=order, ax=ax, color="C0", size=6, jitter=0.15)
        ax.set_title(f"{dataset}: test accuracy per run")
        ax.set_xlabel("")
        fig.tight_layout()
        path = Path(out_dir) / f"{dataset}_accuracy.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=120))
        plt.close(fig)
        paths.append(path)
    return paths

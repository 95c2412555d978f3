"""Markdown tables of a benchmark report, written between markers into ``benchmarks/RESULTS.md``.

``update_markdown(path, report)`` replaces everything between ``<!-- BEGIN GENERATED -->`` and
``<!-- END GENERATED -->`` (appending the block when the markers are absent) and leaves the hand-written
analysis around it untouched. ``python -m benchmarks.report results.json [RESULTS.md]`` does the same
from a saved report.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from if3d.atomic import atomic_write_text

BEGIN = "<!-- BEGIN GENERATED (python -m benchmarks.run) -->"
END = "<!-- END GENERATED -->"


def _fig(d: dict | None, digits: int = 2) -> str:
    if not d or "median" not in d:
        return "—"
    return f"{d['median']:.{digits}f} ({d['min']:.{digits}f}–{d['max']:.{digits}f})"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _fast_path(row: dict) -> str:
    parts = [f"amp={row.get('amp')}", "channels_last" if row.get("channels_last") else "NCHW"]
    if row.get("optimizer_impl"):
        parts.append(f"opt={row['optimizer_impl']}")
    if row.get("compile"):
        parts.append("compile")
    if row.get("malloc_tuning"):
        parts.append("malloc tuning")
    return ", ".join(parts)


def render_markdown(report: dict) -> str:
    """The generated part of RESULTS.md for ``report`` (the JSON of :mod:`benchmarks.run`)."""
    envr = report.get("environment", {})
    cpu, libs, git = envr.get("cpu", {}), envr.get("libraries", {}), envr.get("git", {})
    flags = ", ".join(k for k, v in (cpu.get("flags") or {}).items() if v)
    lines = [
        f"Run: `{report.get('command')}` — {report.get('mode')} mode, started {report.get('started')}, "
        f"{report.get('total_s')} s in total; load average at start {report.get('load_average_at_start')}, "
        f"at end {report.get('load_average_at_end')}.",
        "",
        f"- CPU: {cpu.get('model')} (family {cpu.get('family')}, model {cpu.get('model_number')}), "
        f"{cpu.get('usable_cores')} usable cores, {cpu.get('memory_gib')} GiB; flags: {flags}",
        f"- GPU: {envr.get('gpu') or 'none'}" + (f" — {report['cuda_note']}" if report.get("cuda_note") else ""),
        f"- torch {libs.get('torch')} (oneDNN {libs.get('onednn')}, {libs.get('cpu_capability')}, "
        f"{libs.get('default_num_threads')} threads, {libs.get('parallel_backend')}), torchvision "
        f"{libs.get('torchvision')}, numpy {libs.get('numpy')}, Python {libs.get('python')}",
        f"- git commit {git.get('commit')}{' (with uncommitted changes)' if git.get('dirty') else ''}",
        f"- default fast path: {json.dumps(report.get('default_fast_path'))}",
        "",
        "Figures: img-pairs/s, median (min–max) of the timed runs; speed-up = median / fp32-eager median.",
        "",
    ]
    rows = report.get("model") or []
    if rows:
        batch = rows[0].get("batch")
        lines += [f"### Model only (synthetic tensors, batch {batch}, 112×112)", ""]
        body = []
        for r in rows:
            body.append([r["strategy"], r["mode"], r["device"], r["config"], _fast_path(r),
                         _fig(r.get("img_pairs_per_s")) if "error" not in r else "error: " + r["error"][:80],
                         r.get("speedup_vs_fp32_eager", "—"), r.get("peak_rss_mib", "—"),
                         r.get("peak_cuda_mib", "—"), r.get("first_step_s", "—")])
        lines += _table(["strategy", "mode", "device", "config", "fast path", "img-pairs/s", "speed-up",
                         "peak RSS MiB", "peak CUDA MiB", "first step s"], body)
        lines.append("")
        comp = [r for r in rows if r.get("compile_s") is not None]
        if comp:
            lines += ["torch.compile time: " + ", ".join(f"{r['strategy']} {r['mode']} {r['compile_s']} s"
                                                           for r in comp), ""]
    for r in report.get("optimizer") or []:
        if "error" in r:
            continue
        impls = [k for k in ("default", "foreach", "fused") if k in r]
        lines += [f"### Optimizer step alone ({r['model']}, {r.get('params_m')} M trainable parameters, {r['device']})",
                  ""]
        lines += _table(["implementation", "ms per step"], [[k, _fig(r[k]["step_ms"], 0)] for k in impls])
        lines.append("")
    loaders = report.get("loader") or []
    if loaders:
        lines += ["### Data loader (real FER2013 subset, photo + MediaPipe render, opened and loaded as training does)", ""]
        body = [[r["path"], r["workers"], r["batch"], _fig(r.get("img_pairs_per_s"), 1),
                 _fig(r.get("first_batch_s"), 3), _fig(r.get("augment_img_pairs_per_s"), 1)] for r in loaders
                if "error" not in r]
        lines += _table(["path", "workers", "batch", "img-pairs/s", "first batch s", "batched augmentation img-pairs/s"],
                        body)
        lines.append("")
    e2e = report.get("e2e") or []
    if e2e:
        lines += ["### End to end (the training command `python -m if3d.train`, real loader, second epoch) "
                  "vs model only, same conditions", ""]
        body = [[r["strategy"], r["device"], r["config"], _fast_path(r), r["path"], r["workers"],
                 _fig(r.get("img_pairs_per_s")), _fig(r.get("model_only_img_pairs_per_s")),
                 r.get("ratio_e2e_to_model_only", "—")] if "error" not in r else
                [r["strategy"], r["device"], r["config"], _fast_path(r), r["path"], r["workers"],
                 "error: " + r["error"][:80], "", ""] for r in e2e]
        lines += _table(["strategy", "device", "config", "fast path", "data path", "workers", "e2e img-pairs/s",
                         "model only img-pairs/s", "ratio"], body)
        lines.append("")
    acc = report.get("accuracy")
    if isinstance(acc, dict) and acc.get("runs"):
        st = acc.get("settings", {})
        lines += [f"### Accuracy: {st.get('model')} trained {st.get('epochs')} epochs on {st.get('max_train')} "
                  f"FER2013 training images (batch {st.get('batch')}, If3D recipe), validated on the val subset", ""]
        body = []
        for r in acc["runs"]:
            if "error" in r:
                body.append([r["config"], r["seed"], "error", "", "", "", ""])
                continue
            body.append([r["config"], r["seed"], f"{r['val_accuracy']:.4f}", f"{r['val_balanced_accuracy']:.4f}",
                         " → ".join(f"{x:.3f}" for x in r.get("train_loss_per_epoch", [])),
                         f"{r['train_img_pairs_per_s']:.2f}", r.get("val_samples")])
        lines += _table(["config", "seed", "val accuracy", "balanced accuracy", "train loss per epoch",
                         "train img-pairs/s", "val samples"], body)
        agree = [f"{k.replace('prediction_agreement_', '').replace('_', ' ')}: {acc[k]}" for k in
                 ("prediction_agreement_default_vs_fp32", "prediction_agreement_seed0_vs_seed1") if k in acc]
        if agree:
            lines += ["", "Share of validation samples with the same predicted class — " + "; ".join(agree) + "."]
        if "within_noise" in acc:
            lines += ["", f"Δ accuracy (default − fp32) = {acc['delta_val_accuracy_default_minus_fp32']:+.4f}; "
                      f"noise threshold {acc['noise_threshold']:.4f} (max of 2 × binomial SE of a difference "
                      f"{acc['binomial_se_of_difference']:.4f} and the seed-to-seed difference "
                      f"{acc.get('seed_noise_val_accuracy', '—')}): "
                      f"{'within noise' if acc['within_noise'] else 'NOT within noise'}."]
        lines.append("")
    render = report.get("render")
    if isinstance(render, dict) and render.get("results"):
        lines += ["### Render (MediaPipe backend end to end, `benchmarks/bench_render.py`)", ""]
        body = [[w, _fig(r.get("images_per_s"), 1), _fig(r.get("steady_images_per_s"), 1), _fig(r.get("startup_s"), 2)]
                for w, r in render["results"].items()]
        lines += _table(["workers", "images/s", "steady images/s", "start-up s"], body)
        lines.append("")
    targets = report.get("targets")
    if targets:
        lines += ["### Targets", "", "```json", json.dumps(targets, indent=2), "```", ""]
    return "\n".join(lines)


def update_block(path: str | os.PathLike, begin: str, end: str, body: str) -> None:
    """Replace what lies between the marker lines ``begin`` and ``end`` of ``path`` with ``body`` (atomically),
    appending the markers and ``body`` when they are absent; the rest of the file is left untouched. Each
    benchmark command has its own pair of markers, so several generated blocks live in one RESULTS.md."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    block = f"{begin}\n\n{body}\n{end}"
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(path, text)


def update_markdown(path: str | os.PathLike, report: dict) -> None:
    """Replace the generated block of ``path`` with the tables of ``report`` (atomically)."""
    update_block(path, BEGIN, END, render_markdown(report))


if __name__ == "__main__":
    report_path = Path(sys.argv[1])
    md = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("RESULTS.md")
    update_markdown(md, json.loads(report_path.read_text()))
    print(f"updated {md}")

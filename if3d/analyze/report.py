"""The analysis' tables on disk: results (CSV, and Parquet when pyarrow is installed) and the summary.

Every file is written to a temporary name and moved into place when complete (:mod:`if3d.atomic`); tables
are written in chunks of rows, so a long video's landmarks never have to be in memory as text at once.

``summary.csv``: one row per input and face (``face_id``; inputs without any face get one row with an empty
``face_id``):

================================  =========================================================================
``input``, ``face_id``            the input as given, and the face
``frames``, ``frames_total``      frames with this face, frames of the input; ``seconds``: ``frames / fps``
                                  (empty for images)
``expression``                    the model's dominant class over the face's frames (of the smoothed
                                  probabilities), and ``share_<class>`` the fraction of the face's frames in
                                  each class (with an expression model)
``uncertain_share``               the fraction of the face's frames marked ``uncertain``
``path``                          for a face of an image in a folder: the image (each image's faces are faces of
                                  their own)
``valence_mean``, ``arousal_mean``  means over the face's frames (models with VA outputs)
``emfacs``                        the dominant EMFACS expression, and ``emfacs_share_<label>`` the fraction of
                                  frames per EMFACS label
================================  =========================================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from if3d.analyze.pipeline import AnalysisResult
from if3d.atomic import atomic_write, atomic_write_text

__all__ = ["TEXT_COLUMNS", "concat_csv", "describe", "parquet_available", "read_results_csv", "summarize",
           "write_parquet", "write_results_csv", "write_summary"]

#: columns written as text (the rest are numbers, ``face_detected`` a boolean)
TEXT_COLUMNS = ("input", "path", "expression", "expression_smooth", "au_source", "emfacs", "emfacs_aus")
_LANDMARK = re.compile(r"^[xyz]_\d+$")
CHUNK_ROWS = 2048


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed dtypes (text ``""`` where empty, ``face_id`` nullable integer, numbers float), for stable schemas."""
    df = df.copy()
    for c in df.columns:
        if c in TEXT_COLUMNS:
            df[c] = df[c].where(df[c].notna(), "").astype(str)
        elif c == "face_detected":
            df[c] = df[c].astype(bool)
        elif c == "uncertain":  # empty on rows without a face
            df[c] = df[c].astype("boolean")
        elif c in ("face_id", "frame"):
            df[c] = df[c].astype("Int64")
        else:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    return df


def _chunks(result: AnalysisResult, columns: Sequence[str], landmarks: bool) -> Iterable[pd.DataFrame]:
    n = len(result.table)
    for start in range(0, max(n, 1), CHUNK_ROWS):
        rows = slice(start, min(n, start + CHUNK_ROWS))
        df = result.table.iloc[rows].reindex(columns=[c for c in columns if not _LANDMARK.match(c)])
        if landmarks:
            df = pd.concat([df, result.landmark_frame(rows)], axis=1)
        yield _typed(df)
        if n == 0:
            return


def write_results_csv(path: str | os.PathLike, result: AnalysisResult, columns: Sequence[str],
                      landmarks: bool = True) -> None:
    """Write one input's results as CSV (``columns`` in order, then the landmark columns when asked)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            for i, df in enumerate(_chunks(result, columns, landmarks)):
                df.to_csv(f, header=i == 0, index=False, float_format="%.6g", lineterminator="\n")

    atomic_write(path, write)


def concat_csv(path: str | os.PathLike, parts: Sequence[str | os.PathLike]) -> None:
    """Concatenate CSV files with one identical header into one file (streamed), atomically.

    Raises:
        ValueError: the parts' headers differ (the message names the first that does).
    """

    def write(tmp: str) -> None:
        header = None
        with open(tmp, "w", encoding="utf-8", newline="") as out:
            for part in parts:
                with open(part, encoding="utf-8", newline="") as f:
                    first = f.readline()
                    if header is None:
                        header = first
                        out.write(first)
                    elif first != header:
                        raise ValueError(f"{part}: its columns differ from the other inputs' (analysed with other "
                                         "settings); analyse it again or into another --out")
                    while True:
                        block = f.read(1 << 20)
                        if not block:
                            break
                        out.write(block)

    atomic_write(path, write)


def read_results_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A results CSV without its landmark columns, with the dtypes the analysis writes."""
    df = pd.read_csv(path, usecols=lambda c: not _LANDMARK.match(c), keep_default_na=True,
                     dtype={c: str for c in TEXT_COLUMNS})
    return _typed(df)


def parquet_available() -> bool:
    """True when pyarrow is installed (Parquet files are written then)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def write_parquet(path: str | os.PathLike, parts: Sequence[str | os.PathLike]) -> None:
    """Write the CSV ``parts`` (same columns) as one Parquet file, chunk by chunk, atomically.

    Raises:
        ImportError: pyarrow is not installed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(tmp: str) -> None:
        writer = None
        try:
            for part in parts:
                dtypes = {c: str for c in TEXT_COLUMNS}
                for chunk in pd.read_csv(part, chunksize=CHUNK_ROWS, dtype=dtypes):
                    table = pa.Table.from_pandas(_typed(chunk), preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()

    atomic_write(path, write)


def summarize(table: pd.DataFrame, fps: float, class_names: Sequence[str]) -> pd.DataFrame:
    """The summary rows of one input (module docstring)."""
    name = str(table["input"].iloc[0]) if len(table) else ""
    total = int(table["frame"].nunique()) if len(table) else 0
    faces = table[table["face_detected"].astype(bool)]
    rows = []
    for fid, g in faces.groupby("face_id", sort=True):
        row: dict = {"input": name, "face_id": int(fid), "frames": int(g["frame"].nunique()), "frames_total": total,
                     "seconds": g["frame"].nunique() / fps if fps > 0 else np.nan}
        paths = g["path"].dropna().unique() if "path" in g else []
        if len(paths) == 1 and str(paths[0]) != name:  # a face of one image of a folder: which image
            row["path"] = str(paths[0])
        if class_names and "expression_smooth" in g:
            counts = g["expression_smooth"].value_counts(normalize=True)
            row["expression"] = str(counts.idxmax()) if len(counts) else ""
            for c in class_names:
                row[f"share_{c}"] = float(counts.get(c, 0.0))
        if "uncertain" in g:
            row["uncertain_share"] = float(g["uncertain"].astype(bool).mean())
        for k in ("valence", "arousal"):
            if k in g and g[k].notna().any():
                row[f"{k}_mean"] = float(g[k].mean())
        counts = g["emfacs"].replace("", np.nan).dropna().value_counts(normalize=True)
        row["emfacs"] = str(counts.idxmax()) if len(counts) else ""
        for label, share in counts.items():
            row[f"emfacs_share_{label}"] = float(share)
        rows.append(row)
    if not rows:
        rows.append({"input": name, "face_id": None, "frames": 0, "frames_total": total, "seconds": np.nan})
    return pd.DataFrame(rows)


def write_summary(path: str | os.PathLike, summaries: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate the inputs' summaries and write ``summary.csv`` atomically; returns the table."""
    df = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    if "face_id" in df:
        df["face_id"] = df["face_id"].astype("Int64")
    share = sorted(c for c in df.columns if c.startswith("emfacs_share_"))
    df = df[[c for c in df.columns if c not in share] + share]
    atomic_write_text(path, df.to_csv(index=False, float_format="%.4f", lineterminator="\n"))
    return df


def describe(summary: pd.DataFrame) -> str:
    """The summary as short lines for the terminal."""
    lines = []
    for _, r in summary.iterrows():
        if pd.isna(r.get("face_id")):
            lines.append(f"  {Path(str(r['input'])).name}: no face in {r['frames_total']} frame(s)")
            continue
        parts = [f"face {r['face_id']}: {r['frames']}/{r['frames_total']} frames"]
        if isinstance(r.get("expression"), str) and r["expression"]:
            parts.append(f"expression {r['expression']} ({r.get('share_' + r['expression'], 0):.0%})")
        if "valence_mean" in r and pd.notna(r["valence_mean"]):
            parts.append(f"valence {r['valence_mean']:+.2f}, arousal {r['arousal_mean']:+.2f}")
        if isinstance(r.get("emfacs"), str) and r["emfacs"]:
            parts.append(f"EMFACS {r['emfacs']} ({r.get('emfacs_share_' + r['emfacs'], 0):.0%})")
        lines.append(f"  {Path(str(r['input'])).name}: " + ", ".join(parts))
    return "\n".join(lines)


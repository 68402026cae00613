"""Metrics and the poster's table: per-level accuracy and MAE, overall, confusion, Spearman.

Torch-free: it scores probabilities, whoever produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_smw.atomic import atomic_open, atomic_path, write_json, write_text


def expected_score(probs: np.ndarray) -> np.ndarray:
    """Probability-weighted level, 1-based (1 = lowest level)."""
    return probs @ np.arange(1, probs.shape[1] + 1, dtype=np.float64)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(spearmanr(a, b).statistic)


def compute_metrics(
    true_levels: np.ndarray, probs: np.ndarray, levels: Sequence[str]
) -> dict[str, Any]:
    """``accuracy`` (0-1), ``mae`` (levels), ``per_level``, ``confusion``, ``spearman``, ``n``."""
    true_levels = np.asarray(true_levels, dtype=np.int64)
    pred = probs.argmax(1)
    k = len(levels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (true_levels, pred), 1)
    per_level = {}
    for i, name in enumerate(levels):
        mask = true_levels == i
        n = int(mask.sum())
        per_level[name] = {
            "accuracy": float((pred[mask] == i).mean()) if n else None,
            "mae": float(np.abs(pred[mask] - i).mean()) if n else None,
            "count": n,
        }
    n = len(true_levels)
    return {
        "accuracy": float((pred == true_levels).mean()) if n else None,
        "mae": float(np.abs(pred - true_levels).mean()) if n else None,
        "per_level": per_level,
        "confusion": confusion.tolist(),
        "spearman": spearman(true_levels.astype(np.float64), expected_score(probs)),
        "n": n,
        "levels": list(levels),
    }


def poster_table(metrics: dict[str, Any]) -> str:
    """The poster's table as Markdown: accuracy and MAE per actual level, and overall."""
    names = list(metrics["per_level"])
    head = "| Actual level | " + " | ".join(names) + " | Overall |"
    rule = "|---" * (len(names) + 2) + "|"

    def fmt(v: float | None, pct: bool) -> str:
        return "-" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:.2f}")

    acc = [fmt(metrics["per_level"][n]["accuracy"], True) for n in names]
    mae = [fmt(metrics["per_level"][n]["mae"], False) for n in names]
    cnt = [str(metrics["per_level"][n]["count"]) for n in names]
    return "\n".join([
        head, rule,
        "| Accuracy | " + " | ".join(acc) + f" | {fmt(metrics['accuracy'], True)} |",
        "| Mean abs. error | " + " | ".join(mae) + f" | {fmt(metrics['mae'], False)} |",
        "| Count | " + " | ".join(cnt) + f" | {metrics['n']} |",
    ])


def plot_confusion(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(metrics["confusion"])
    names = metrics["levels"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted level")
    ax.set_ylabel("actual level")
    peak = confusion.max() or 1
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > peak / 2 else "black")
    ax.set_title(title or f"accuracy {100 * (metrics['accuracy'] or 0):.1f}%")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write_predictions_csv(
    path: str | Path, paths: Sequence[str], true_levels: np.ndarray, probs: np.ndarray,
    levels: Sequence[str],
) -> Path:
    import csv

    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true_level", "predicted_level", *[f"p_{n}" for n in levels]])
        for p, t, row in zip(paths, true_levels, probs, strict=True):
            writer.writerow([p, levels[int(t)], levels[int(row.argmax())],
                             *[f"{v:.6f}" for v in row]])
    return Path(path)


def write_report(folder: str | Path, name: str, metrics: dict[str, Any], title: str,
                 extra_md: str = "") -> dict[str, Path]:
    """``<name>.json``, ``<name>.md`` (the poster's table) and ``<name>_confusion.png``."""
    folder = Path(folder)
    png = plot_confusion(metrics, folder / f"{name}_confusion.png", title)
    md = [f"# {title}", "", poster_table(metrics), "",
          f"Spearman (true level vs expected score): {_fmt(metrics['spearman'])}", "",
          f"![confusion matrix]({png.name})", ""]
    if extra_md:
        md += [extra_md, ""]
    return {
        "json": write_json(folder / f"{name}.json", metrics),
        "md": write_text(folder / f"{name}.md", "\n".join(md)),
        "png": png,
    }


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"

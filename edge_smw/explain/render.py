"""Figures and the index page: matplotlib's object API on the Agg canvas (no pyplot state,
no display needed), every file written atomically. Torch-free.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from edge_smw.atomic import write_bytes, write_text
from edge_smw.explain.cam_numpy import HeatMap

HEAT_CMAP = "jet"
OVERLAY_ALPHA = 0.45


def new_figure(width: float, height: float):  # noqa: ANN202 - matplotlib Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:  # noqa: ANN001 - matplotlib Figure
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return write_bytes(path, buffer.getvalue())


def plain(text: str) -> str:
    """Text safe for a matplotlib title (a '$' in a file name would start mathtext)."""
    return text.replace("$", r"\$")


def probabilities_line(levels: Sequence[str], probabilities: np.ndarray) -> str:
    return "  ".join(f"{name}: {float(p):.2f}" for name, p in zip(levels, probabilities,
                                                                  strict=True))


def heatmap_figure(heat: HeatMap, path: str | Path) -> Path:
    """crop | heat map | overlay, with the predicted level and probabilities in the title."""
    fig = new_figure(9.6, 3.8)
    axes = fig.subplots(1, 3)
    rgb = heat.rgb()
    axes[0].imshow(rgb)
    axes[0].set_title("face crop (model pixels)", fontsize=9)
    axes[1].imshow(heat.heat, cmap=HEAT_CMAP, vmin=0.0, vmax=1.0)
    axes[1].set_title(f"{heat.method} for level {plain(heat.levels[heat.level])}", fontsize=9)
    axes[2].imshow(rgb)
    axes[2].imshow(heat.heat, cmap=HEAT_CMAP, vmin=0.0, vmax=1.0, alpha=OVERLAY_ALPHA)
    axes[2].set_title("overlay", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    predicted = heat.predicted
    fig.suptitle(
        f"{plain(Path(heat.name).name)}: predicted {plain(heat.levels[predicted])} "
        f"({100 * float(heat.probabilities[predicted]):.0f}%)\n"
        f"{plain(probabilities_line(heat.levels, heat.probabilities))}",
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path)


@dataclass(frozen=True)
class Image:
    """An index cell that shows a picture (path relative to the page) instead of text."""

    src: str


def write_index(path: str | Path, title: str, header: Sequence[str],
                rows: Sequence[Sequence[str | Image]], notes: Sequence[str] = ()) -> Path:
    """A static HTML table; every name is escaped, every link percent-quoted."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}"
        "img{max-width:720px}</style>",
        f"</head><body><h1>{esc(title)}</h1>",
    ]
    parts += [f"<p>{esc(note)}</p>" for note in notes]
    parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, Image):
                src = quote(cell.src)
                cells.append(f'<td><a href="{src}"><img src="{src}" alt="{esc(cell.src)}">'
                             "</a></td>")
            else:
                cells.append(f"<td>{esc(str(cell))}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>\n")
    return write_text(path, "\n".join(parts))

"""`vlrl data show`: a contact sheet of samples with their boxes drawn and their question and answer printed.

The way a person checks a dataset before training on it: are the boxes on the bars and
the columns, does the answer match the picture. Each tile is one sample, its image scaled
to fit, every labelled box field outlined in its own colour, and below it the id, the
question, the accepted answers and the family / difficulty when the sample has them.
"""

from __future__ import annotations

import math
import textwrap
from itertools import islice
from pathlib import Path
from typing import Any, Iterable

from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from vlrl.config import TaskConfig
from vlrl.data.rows import open_dataset
from vlrl.task import open_task
from vlrl.types import Sample

TILE = (420, 300)  # image area of one tile
TEXT_LINES = 6
LINE = 15
BOX_COLOURS = {"x_values_bbox": "#e41a1c", "y_values_bbox": "#e41a1c", "columns_bbox": "#377eb8",
               "rows_bbox": "#4daf4a", "bars_bbox": "#ff7f00", "points_bbox": "#ff7f00", "wedges_bbox": "#984ea3",
               "labels_bbox": "#a65628", "figure_bbox": "#999999"}


def contact_sheet(samples: Iterable[Sample], n: int, out: str | Path) -> Path:
    """Draw the first ``n`` samples on one PNG at ``out``."""
    chosen = list(islice(samples, n))
    if not chosen:
        raise ValueError("no samples to show")
    font = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), 12)
    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    tile_w, tile_h = TILE[0] + 10, TILE[1] + TEXT_LINES * LINE + 16
    sheet = Image.new("RGB", (cols * tile_w, rows * tile_h), "white")
    for k, sample in enumerate(chosen):
        x, y = (k % cols) * tile_w + 5, (k // cols) * tile_h + 5
        sheet.paste(_tile(sample), (x, y))
        ImageDraw.Draw(sheet).multiline_text((x, y + TILE[1] + 4), _caption(sample), fill="black", font=font,
                                             spacing=3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _tile(sample: Sample) -> Image.Image:
    image = sample.images[0].convert("RGB")
    scale = min(TILE[0] / image.width, TILE[1] / image.height)
    shown = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    draw = ImageDraw.Draw(shown)
    for key, colour in BOX_COLOURS.items():
        for box in _boxes(sample.metadata.get(key)):
            draw.rectangle([box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale], outline=colour)
    tile = Image.new("RGB", TILE, "#f0f0f0")
    tile.paste(shown, (0, 0))
    return tile


def _boxes(value: Any) -> list[tuple[float, float, float, float]]:
    if isinstance(value, dict) and "x1" in value:
        value = [value]
    elif isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, list):
        return []
    return [(b["x1"], b["y1"], b["x2"], b["y2"]) for b in value if isinstance(b, dict) and "x1" in b]


def _caption(sample: Sample) -> str:
    tags = " · ".join(str(sample.metadata[k]) for k in ("type", "family", "difficulty") if k in sample.metadata)
    lines = [f"{sample.id}  {tags}", *textwrap.wrap(f"Q: {sample.question}", 68)[:TEXT_LINES - 2],
             f"A: {' | '.join(sample.answers)}"[:80]]
    return "\n".join(lines)


def show(path: str, n: int, out: str | Path, fmt: str = "auto", split: str = "", seed: int = 0) -> Path:
    """Contact sheet of a dataset (file, folder or hub name; format detected) or of a task by name."""

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if Path(path).exists() or path.count("/") == 1:
        _, samples = open_dataset(path, fmt, split, seed, on_error="skip", limit=n)
    else:
        samples, _ = open_task(TaskConfig(name=path), seed)
    chosen = list(islice(samples, n))
    written = contact_sheet(chosen, n, out)
    errors = getattr(samples, "errors", None)
    skipped = ""
    if errors is not None and errors.total:
        skipped = f"; skipped {dict(errors.skipped)}, first: {next(iter(errors.examples.values()))}"
    print(f"wrote {written} ({len(chosen)} samples from {path}{skipped})")
    return written

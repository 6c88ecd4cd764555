"""Logs a person can read and plot: a CSV of metrics per step and PNG image grids.

    log = CSVLogger("runs/x/train_log.csv")          # appends when resuming
    log.log(step=10, loss=0.5, psnr=21.3)            # new columns extend the header
    save_image_grid([img_a, img_b, ...], "runs/x/samples/step_000010.png", ncols=4)
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np


class CSVLogger:
    """One row per log() call; columns are the union of keys seen (header rewritten when it grows)."""

    def __init__(self, path, resume: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self.columns: list[str] = []
        if resume and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                self.rows = list(reader)
        elif self.path.exists():
            self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run repeats those steps)."""
        keep = [r for r in self.rows
                if "step" not in r or r["step"] in ("", None) or int(float(r["step"])) <= step]
        if len(keep) != len(self.rows):
            self.rows = keep
            self._rewrite()

    def log(self, **values) -> None:
        row = {k: _fmt(v) for k, v in values.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new or not self.path.is_file():
            self.columns += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.columns)
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.path)


def _fmt(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def save_image_grid(images, path, ncols: int = 8, pad: int = 2) -> Path:
    """Save uint8 RGB images (a list of (H, W, 3) or an (N, H, W, 3) array, all one size) as a
    grid PNG with white padding."""
    from PIL import Image

    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("save_image_grid: no images")
    h, w = images[0].shape[:2]
    if any(im.shape != (h, w, 3) or im.dtype != np.uint8 for im in images):
        raise ValueError("save_image_grid: images must all be uint8 (H, W, 3) of one size")
    ncols = max(1, min(ncols, len(images)))
    nrows = (len(images) + ncols - 1) // ncols
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on the build machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Lay out a matplotlib figure, write it to `path` (PNG at 110 dpi, parent folders made) and
    close it; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

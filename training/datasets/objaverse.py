"""Zero-1-to-3 Objaverse renders.

On disk:  <root>/<uid>/NNN.png   RGBA render, transparent background (composited on white)
          <root>/<uid>/NNN.npy   3x4 world-to-camera [R|t] in Blender camera axes
                                 (x right, y up, looking along -z)
12 views per object, 512 px, vertical FOV 49.13 deg (35 mm lens on a 32 mm sensor), object
normalised to the unit box at the world origin, cameras 1.5-2.2 from it.

Splits: `uid_list` is a .json (a list of uids, or {split: [uids]}) or .txt (one uid a line).
A {split: [...]} file gives the split's uids directly; a plain list restricts the objects and
the split is then the deterministic hash split (training.datasets.hash_split) of each uid, as
when no list is given. Poses are converted with gst_ros.geometry.w2c_from_blender; K comes
from the FOV for the decoded image size.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gst_ros.geometry import intrinsics_from_fov, w2c_from_blender

from . import SPLITS, SceneReader, SceneRecord, ViewRecord, hash_split

ZERO123_FOV_DEG = 49.13


def read_uid_list(path, split: str) -> list[str] | set[str]:
    """uids from a .json ({split: [...]} -> that split's list; [...] -> all) or .txt file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            if split not in data:
                raise ValueError(f"{path}: no split {split!r} (has {sorted(data)})")
            return list(data[split])
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list of uids or {{split: [uids]}}")
        return set(data)
    return {s.strip() for s in text.splitlines() if s.strip() and not s.startswith("#")}


class ObjaverseDataset(SceneReader):
    """Objaverse renders, one scene per object uid (see module docstring for the layout)."""

    def __init__(self, root, split: str = "train", uid_list=None, fov_deg: float = ZERO123_FOV_DEG,
                 split_fractions: dict[str, float] | None = None, image_size: int | None = None):
        super().__init__(image_size)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split, self.fov_deg = Path(root), split, float(fov_deg)
        chosen = None
        restrict = None
        if uid_list is not None:
            uids = read_uid_list(uid_list, split)
            if isinstance(uids, list):
                chosen = uids
            else:
                restrict = uids
        if chosen is None:
            names = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
            if restrict is not None:
                names = [n for n in names if n in restrict]
            chosen = [n for n in names if hash_split(n, split_fractions) == split]
        for uid in chosen:
            d = self.root / uid
            if not d.is_dir():
                self.skip("missing object directory", d)
                continue
            self.scenes.append(SceneRecord(scene_id=uid, path=d))

    def _parse_views(self, scene: SceneRecord) -> list[ViewRecord]:
        views = []
        for png in sorted(scene.path.glob("*.png")):
            npy = png.with_suffix(".npy")
            if not npy.is_file():
                self.skip("missing pose file", npy)
                continue
            try:
                RT = np.load(npy, allow_pickle=False)
                w2c = w2c_from_blender(RT)
            except (ValueError, OSError, EOFError) as e:  # GeometryError is a ValueError
                self.skip("bad pose file", npy, str(e))
                continue
            views.append(ViewRecord(png, w2c, view_id=png.stem, intrinsics_fn=self._intrinsics))
        return views

    def _intrinsics(self, width: int, height: int) -> np.ndarray:
        return intrinsics_from_fov(self.fov_deg, width, height, axis="y")

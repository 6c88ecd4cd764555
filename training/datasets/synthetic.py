"""Reader for the synthetic data sets written by `gst render` (gst_ros.sim.dataset).

    ds = SyntheticDataset("data/synth", split="train")     # split names from the manifest
    sample = ds[0]                                          # MultiViewSample, all split views
    sample = ds.get(0, view_ids=["000", "003"])             # a chosen subset

Cameras come out exactly as saved: K (N,3,3) pixels, w2c (N,4,4) world-to-camera, OpenCV
axes, world z up (gst_ros.geometry's convention). Corrupt or missing files never crash the
reader: a scene whose cameras.json is unreadable is dropped when the data set opens, an
unreadable image drops that view, and a scene left with no view is replaced by the next one.
Each skipped file is counted in `skipped` and logged once with its path and reason.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np

from .sample import MultiViewSample, SplitNotFoundError

log = logging.getLogger(__name__)
FORMAT = "gst_ros.synthetic"


class SyntheticDataset:
    held_out_split = "test_views"  # `gst render` writes train / test_views / test_objects, no val

    def __init__(self, root, split: str = "train", num_views: int | None = None):
        """`num_views`: if set, each sample holds the first `num_views` views of its split."""
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(
                f"{self.root}: not a synthetic data set (no manifest.json): render one with `gst render`, "
                f"or name the reader of your data's format (--data objaverse|co3d|re10k|mvimgnet)")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{mpath}: not valid JSON ({e})") from e
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath}: format {manifest.get('format')!r}, expected {FORMAT!r}")
        splits = manifest.get("splits", {})
        if split not in splits:
            raise SplitNotFoundError(f"{self.root}: no split {split!r}; the manifest has {sorted(splits)}")
        if num_views is not None and num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self.split = split
        self.num_views = num_views
        self.manifest = manifest
        self.skipped = 0
        self._bad: set[str] = set()
        self.items: list[tuple[str, list[str], dict]] = []  # (scene id, view ids, cameras by view id)
        for entry in splits[split]:
            sid, views = entry["scene"], list(entry["views"])
            cams = self._read_cameras(sid)
            if cams is None:
                continue
            missing = [v for v in views if v not in cams]
            for v in missing:
                self._skip(f"{sid}/{v}", "view listed in the manifest but absent from cameras.json")
            views = [v for v in views if v in cams]
            if views:
                self.items.append((sid, views, cams))

    def _skip(self, what: str, reason: str) -> None:
        if what not in self._bad:
            self._bad.add(what)
            self.skipped += 1
            log.warning("synthetic data set %s: skipping %s: %s", self.root, what, reason)

    def _read_cameras(self, sid: str) -> dict | None:
        path = self.root / "scenes" / sid / "cameras.json"
        try:
            data = json.loads(path.read_text())
            cams = {}
            for v in data["views"]:
                K = np.asarray(v["K"], dtype=np.float64)
                w2c = np.asarray(v["w2c"], dtype=np.float64)
                finite = np.isfinite(K).all() and np.isfinite(w2c).all()
                if K.shape != (3, 3) or w2c.shape != (4, 4) or not finite:
                    raise ValueError(f"view {v.get('id')}: bad K or w2c")
                cams[v["id"]] = (K, w2c)
            return cams
        except (OSError, ValueError, KeyError, TypeError) as e:
            self._skip(str(path.relative_to(self.root)), f"unreadable cameras file ({type(e).__name__}: {e})")
            return None

    def __len__(self) -> int:
        return len(self.items)

    def scene_ids(self) -> list[str]:
        return [sid for sid, _, _ in self.items]

    def scene_view_ids(self, index: int) -> list[str]:
        """Every view of scene `index` that has a camera, whatever its split (sorted), for
        `get(index, view_ids=...)`: a test_views scene's training views too."""
        return sorted(self.items[index][2])

    def _read_rgb(self, sid: str, vid: str) -> np.ndarray | None:
        path = self.root / "scenes" / sid / "rgb" / f"{vid}.png"
        key = str(path.relative_to(self.root))
        if key in self._bad:
            return None
        img = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if img is None:
            self._skip(key, "missing file" if not path.is_file() else "not a readable image")
            return None
        return np.ascontiguousarray(img[:, :, ::-1])

    def get(self, index: int, view_ids: list[str] | None = None) -> MultiViewSample:
        """Sample of scene `index` with `view_ids` (default: the split's views, or its first
        `num_views`). Unreadable views are dropped; if none is left, the next scene is used."""
        if not self.items:
            raise IndexError(f"{self.root}: split {self.split!r} has no readable scene")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scenes")
        index %= len(self)
        for k in range(len(self)):
            sid, views, cams = self.items[(index + k) % len(self)]
            want = list(view_ids) if view_ids is not None and k == 0 else views
            if view_ids is None and self.num_views is not None:
                want = want[: self.num_views]
            unknown = [v for v in want if v not in cams]
            if unknown:
                raise KeyError(f"scene {sid}: unknown view ids {unknown}")
            imgs, Ks, w2cs, kept = [], [], [], []
            for v in want:
                img = self._read_rgb(sid, v)
                if img is None or (imgs and img.shape != imgs[0].shape):
                    if img is not None:
                        self._skip(f"scenes/{sid}/rgb/{v}.png", f"size {img.shape} differs from the scene's")
                    continue
                imgs.append(img)
                Ks.append(cams[v][0])
                w2cs.append(cams[v][1])
                kept.append(v)
            if imgs:
                return MultiViewSample(images=np.stack(imgs), K=np.stack(Ks), w2c=np.stack(w2cs),
                                       scene_id=sid, category="synthetic", view_ids=kept)
        raise IndexError(f"{self.root}: split {self.split!r} has no readable image left")

    def __getitem__(self, index: int) -> MultiViewSample:
        return self.get(index)

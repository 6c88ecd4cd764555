"""RealEstate10K.

Cameras:  <root>/<split>/<clip>.txt   first line: the video URL; then one line per frame of
          19 numbers: timestamp (microseconds), fx fy cx cy (normalised by image width/height),
          two zeros, a row-major 3x4 world-to-camera [R|t] in OpenCV axes.
Frames:   <frames_root>/<clip>/<timestamp>.png (or .jpg / .jpeg), extracted from the video by
          the user (they are not distributed with the data set). Default frames_root:
          <root>/frames/<split>.

Lines are parsed by gst_ros.geometry.parse_realestate10k_line; K is made for the size of the
decoded frame. Frames with no image file are skipped and counted ("missing frame"); a clip is
a scene (category "").
"""
from __future__ import annotations

import os
from pathlib import Path

from gst_ros.geometry import parse_realestate10k_line

from . import SPLITS, SceneReader, SceneRecord, ViewRecord

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")


class _CameraLine:
    """K for a decoded frame size from one camera line (picklable, for DataLoader workers)."""

    def __init__(self, line: str):
        self.line = line

    def __call__(self, width: int, height: int):
        return parse_realestate10k_line(self.line, width, height)[1]


class RealEstate10KDataset(SceneReader):
    """RealEstate10K clips (see module docstring for the layout)."""

    def __init__(self, root, split: str = "train", frames_root=None, image_size: int | None = None):
        super().__init__(image_size)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split = Path(root), split
        self.frames_root = Path(frames_root) if frames_root is not None else self.root / "frames" / split
        cam_dir = self.root / split
        if not cam_dir.is_dir():
            raise FileNotFoundError(f"RealEstate10K: no camera directory {cam_dir}")
        for name in sorted(e.name for e in os.scandir(cam_dir) if e.name.endswith(".txt")):
            self.scenes.append(SceneRecord(scene_id=name[:-4], path=cam_dir / name))

    def _parse_views(self, scene: SceneRecord) -> list[ViewRecord]:
        lines = scene.path.read_text().splitlines()
        frame_dir = self.frames_root / scene.scene_id
        files = {}
        if frame_dir.is_dir():
            for e in os.scandir(frame_dir):
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in FRAME_EXTENSIONS:
                    files[stem] = Path(e.path)
        views = []
        for k, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            try:
                ts, _, w2c = parse_realestate10k_line(line, 1, 1)  # the pose does not depend on size
            except ValueError as e:  # GeometryError is a ValueError
                self.skip("bad camera line", f"{scene.path}:{k}", str(e))
                continue
            image = files.get(str(ts))
            if image is None:
                self.skip("missing frame", frame_dir / f"{ts}.png", "no .png/.jpg frame for this timestamp")
                continue
            views.append(ViewRecord(image, w2c, view_id=str(ts), intrinsics_fn=_CameraLine(line)))
        return views

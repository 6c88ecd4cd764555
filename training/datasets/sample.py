"""The one sample type every dataset reader yields.

Conventions (those of gst_ros.geometry):
- images: (N, H, W, 3) uint8 RGB, row-major, top-left pixel first.
- K: (N, 3, 3) float64 pixel intrinsics of those images, OpenCV/ROS CameraInfo convention
  (pixel (u, v) = (column, row), the centre of the top-left pixel is (0, 0)).
- w2c: (N, 4, 4) float64 world-to-camera matrices, OpenCV optical axes (x right, y down,
  z forward), X_cam = R X_world + t, in the dataset's own world frame and units.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class SplitNotFoundError(KeyError, ValueError):
    """A reader was asked for a split its data set does not have. A KeyError (a split is looked
    up by name) and a ValueError (a bad argument), printed without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class MultiViewSample:
    images: np.ndarray
    K: np.ndarray
    w2c: np.ndarray
    scene_id: str = ""
    category: str = ""
    view_ids: list[str] = field(default_factory=list)

    def __post_init__(self):
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be (N,H,W,3) uint8, got {self.images.shape} {self.images.dtype}")
        if self.K.shape != (n, 3, 3) or self.w2c.shape != (n, 4, 4):
            raise ValueError(f"K must be ({n},3,3) and w2c ({n},4,4); got {self.K.shape}, {self.w2c.shape}")
        if not (np.isfinite(self.K).all() and np.isfinite(self.w2c).all()):
            raise ValueError(f"scene {self.scene_id!r}: non-finite intrinsics or pose")

    def __len__(self) -> int:
        return len(self.images)

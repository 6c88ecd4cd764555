"""MVImgNet.

On disk:  <root>/<class>/<instance>/images/*                      the frames
          <root>/<class>/<instance>/sparse/0/{cameras,images,points3D}.{bin,txt}   COLMAP model

COLMAP poses are world-to-camera in OpenCV axes; image names in the model match files in
images/. K comes from the COLMAP camera (training.datasets.colmap.camera_K; lens distortion
ignored); when the stored frame is a uniformly scaled version of the COLMAP camera's image size
K is rescaled to it, any other size mismatch skips the frame. One scene = one instance; its
category is the class directory name. MVImgNet has no official split: the split is the
deterministic hash split of "<class>/<instance>". COLMAP models are parsed lazily, when a
scene is first used.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gst_ros.geometry import crop_resize_intrinsics

from . import SPLITS, SceneReader, SceneRecord, ViewRecord, hash_split
from .colmap import ColmapFormatError, camera_K, image_w2c, read_model


class _ScaledK:
    """K of a COLMAP camera for the decoded frame size (picklable, for DataLoader workers)."""

    def __init__(self, K: np.ndarray, width: int, height: int):
        self.K, self.width, self.height = K, width, height

    def __call__(self, width: int, height: int) -> np.ndarray:
        if (width, height) == (self.width, self.height):
            return self.K
        if abs(width / self.width - height / self.height) > 0.01 * width / self.width:
            raise ValueError(f"frame is {width}x{height} but the COLMAP camera is {self.width}x{self.height} "
                             "(not a uniform scaling)")
        return crop_resize_intrinsics(self.K, box=(0, 0, self.width, self.height), out_size=(width, height))


class MVImgNetDataset(SceneReader):
    """MVImgNet instances (see module docstring for the layout)."""

    def __init__(self, root, split: str = "train", categories=None, model_subdir: str = "sparse/0",
                 split_fractions: dict[str, float] | None = None, image_size: int | None = None):
        super().__init__(image_size)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split, self.model_subdir = Path(root), split, model_subdir
        if categories is None:
            categories = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        for cat in categories:
            cat_dir = self.root / cat
            if not cat_dir.is_dir():
                self.skip("missing category directory", cat_dir)
                continue
            for inst in sorted(e.name for e in os.scandir(cat_dir) if e.is_dir()):
                key = f"{cat}/{inst}"
                if hash_split(key, split_fractions) != split:
                    continue
                model = cat_dir / inst / model_subdir
                if not model.is_dir():
                    self.skip("missing COLMAP model", model)
                    continue
                self.scenes.append(SceneRecord(scene_id=key, category=cat, path=model))

    def _parse_views(self, scene: SceneRecord) -> list[ViewRecord]:
        model = read_model(scene.path, with_points3D=False)  # ColmapFormatError is a ValueError
        image_dir = scene.path.parents[len(Path(self.model_subdir).parts) - 1] / "images"
        views = []
        for im in sorted(model.images.values(), key=lambda m: m.name):
            cam = model.cameras[im.camera_id]
            try:
                K = camera_K(cam)
                w2c = image_w2c(im)
            except (ColmapFormatError, ValueError) as e:
                self.skip("bad camera", f"{scene.path} image {im.name}", str(e))
                continue
            views.append(ViewRecord(image_dir / im.name, w2c, view_id=im.name,
                                    intrinsics_fn=_ScaledK(K, cam.width, cam.height)))
        return views

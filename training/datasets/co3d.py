"""CO3D v2.

On disk:  <root>/<category>/frame_annotations.jgz    gzipped JSON list of frame dicts:
              sequence_name, frame_number, image {path (relative to root), size [H, W]},
              viewpoint {R (3x3), T (3), focal_length [fx, fy], principal_point [px, py],
                         intrinsics_format "ndc_isotropic" | "ndc_norm_image_bounds"}
          <root>/<category>/set_lists/set_lists_<subset>.json   {train, val, test: [[seq, frame, path], ...]}

R, T are PyTorch3D's row-vector convention (X_cam = X_world @ R + T, camera axes x left, y up,
z forward), converted by gst_ros.geometry.w2c_from_pytorch3d; K from the NDC intrinsics by
gst_ros.geometry.intrinsics_from_co3d for the annotated image size. One scene = one sequence;
its category is on every sample. Without a set list file the split is the deterministic hash
split of "<category>/<sequence>" (a warning says so).

`seen_categories`: the categories the model trained on; `category_group(category)` then says
"seen" or "unseen" (evaluation reports them apart).
"""
from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from pathlib import Path

from gst_ros.geometry import intrinsics_from_co3d, w2c_from_pytorch3d

from . import SPLITS, SceneReader, SceneRecord, ViewRecord, hash_split, log


class CO3DDataset(SceneReader):
    """CO3D v2 sequences (see module docstring for the layout and conventions)."""

    def __init__(self, root, split: str = "train", categories=None, subset: str = "fewview_dev",
                 seen_categories=None, split_fractions: dict[str, float] | None = None,
                 image_size: int | None = None):
        super().__init__(image_size)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.root, self.split, self.subset = Path(root), split, subset
        self.seen_categories = None if seen_categories is None else set(seen_categories)
        if categories is None:
            categories = sorted(e.name for e in os.scandir(self.root)
                                if e.is_dir() and (Path(e.path) / "frame_annotations.jgz").is_file())
        for cat in categories:
            self._index_category(cat, split_fractions)

    def category_group(self, category: str) -> str:
        """'seen' / 'unseen' relative to `seen_categories`; '' when no list was given."""
        if self.seen_categories is None:
            return ""
        return "seen" if category in self.seen_categories else "unseen"

    def _read_set_list(self, cat: str):
        """{(sequence, frame_number)} of this split, or None when the category has no set list."""
        path = self.root / cat / "set_lists" / f"set_lists_{self.subset}.json"
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return {(str(e[0]), int(e[1])) for e in data[self.split]}
        except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
            self.skip("bad set list", path, str(e))
            return set()

    def _index_category(self, cat: str, split_fractions) -> None:
        ann = self.root / cat / "frame_annotations.jgz"
        try:
            with gzip.open(ann, "rt") as f:
                frames = json.load(f)
            if not isinstance(frames, list):
                raise ValueError("expected a JSON list of frames")
        except (OSError, EOFError, ValueError) as e:  # gzip errors are OSError/EOFError; JSON ValueError
            self.skip("unreadable annotations", ann, str(e))
            return
        wanted = self._read_set_list(cat)
        if wanted is None:
            log.warning("CO3D %s: no set_lists_%s.json, using the hash split of sequence names",
                        cat, self.subset)
        seqs: dict[str, list] = defaultdict(list)
        for k, fr in enumerate(frames):
            try:
                seq, num = str(fr["sequence_name"]), int(fr["frame_number"])
            except (KeyError, TypeError, ValueError) as e:
                self.skip("bad frame annotation", f"{ann} frame #{k}", f"missing sequence/frame ({e})")
                continue
            if wanted is not None and (seq, num) not in wanted:
                continue
            if wanted is None and hash_split(f"{cat}/{seq}", split_fractions) != self.split:
                continue
            try:
                img, vp = fr["image"], fr["viewpoint"]
                h, w = (int(x) for x in img["size"])
                w2c = w2c_from_pytorch3d(vp["R"], vp["T"])
                K = intrinsics_from_co3d(vp["focal_length"], vp["principal_point"], h, w,
                                         vp.get("intrinsics_format", "ndc_isotropic"))
                path = self.root / img["path"]
            except (KeyError, TypeError, ValueError) as e:  # GeometryError is a ValueError
                self.skip("bad frame annotation", f"{ann} {seq} frame {num}", str(e))
                continue
            seqs[seq].append((num, ViewRecord(path, w2c, view_id=str(num), K=K, expected_hw=(h, w))))
        for seq in sorted(seqs):
            views = [v for _, v in sorted(seqs[seq], key=lambda x: x[0])]
            self.scenes.append(SceneRecord(scene_id=f"{cat}/{seq}", category=cat, views=views, path=ann))

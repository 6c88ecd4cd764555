"""Dataset readers: one per data set, all yielding training.datasets.sample.MultiViewSample.

    build_dataset(name, root, split, **kw)     name in DATASETS (synthetic|objaverse|co3d|re10k|mvimgnet)
    PairDataset(reader, size=256, ...)         (observation, target) pairs, see pairs.py

Every reader except the synthetic one derives from SceneReader (below), which gives:
- laziness: the constructor indexes files (directory listings, annotation files); camera files
  of one scene are parsed when that scene is first used and images are decoded only in
  `load` / `__getitem__`, so a large data set is cheap to open;
- robustness: a corrupt or missing file (unreadable image, truncated json, bad numbers, NaN
  pose) is skipped, counted in `skipped` and `skip_reasons` (a Counter by reason) and logged
  as a warning naming the file and the problem; a run never crashes on one bad sample.
  Counts are per process: with DataLoader workers each worker counts its own.
- `scene_views(i)` (cameras without decoding images) and `load(i, view_indices, size)` (decode
  only some views, optionally centre-cropped/resized with K adjusted), which PairDataset uses.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gst_ros.geometry import GeometryError
from gst_ros.preprocess import ImageReadError, center_crop_resize, load_image

from .sample import MultiViewSample

log = logging.getLogger("training.datasets")

SPLITS = ("train", "val", "test")


@dataclass
class ViewRecord:
    """One indexed view: where its image is and its camera, before any decoding.

    w2c: (4,4) float64 world-to-camera, OpenCV axes (x right, y down, z forward).
    K: (3,3) pixel intrinsics (OpenCV convention, top-left pixel centre (0,0)) when they are
    known without the image; otherwise `intrinsics_fn(width, height) -> K` computes them from
    the decoded image size. `expected_hw` = (H, W) when the annotation states the image size
    (a decoded image of another size is skipped)."""
    image_path: Path
    w2c: np.ndarray
    view_id: str
    K: np.ndarray | None = None
    intrinsics_fn: Callable[[int, int], np.ndarray] | None = None
    expected_hw: tuple[int, int] | None = None


@dataclass
class SceneRecord:
    """One indexed scene (an object, a sequence, a clip). `views` is None until parsed."""
    scene_id: str
    category: str = ""
    views: list[ViewRecord] | None = None
    path: Path | None = None  # the scene's directory or camera file, for lazy readers


def check_split_fractions(fractions: dict[str, float]) -> None:
    """ValueError unless the split shares are >= 0 and sum to 1 (NaN fails too)."""
    total = sum(fractions.values())
    if not (abs(total - 1.0) <= 1e-6 and all(v >= 0 for v in fractions.values())):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


def hash_split(key: str, fractions: dict[str, float] | None = None) -> str:
    """Deterministic split name of `key` (a scene id) from a SHA-1 hash: independent of
    Python's hash seed, of file order and of the machine. `fractions` maps split -> share
    (default train 0.9, val 0.05, test 0.05; must sum to 1)."""
    fractions = fractions or {"train": 0.9, "val": 0.05, "test": 0.05}
    check_split_fractions(fractions)
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64
    acc = 0.0
    names = list(fractions)
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return names[-1]


class SceneReader(torch.utils.data.Dataset):
    """Base of the real-data readers: index of SceneRecords, skip accounting, image loading.

    Subclasses fill `self.scenes` in __init__ and, when their views are parsed lazily,
    override `_parse_views(scene) -> list[ViewRecord]` (raise ValueError/OSError naming the
    problem for a corrupt scene; call self.skip(...) for single bad views and leave them out).
    `image_size`: when set, every loaded view is centre-cropped and resized to that square size
    (K adjusted); when None, views keep their native size and views whose size differs from
    the first loaded view of the scene are skipped (a MultiViewSample holds one image size)."""

    min_views = 1
    held_out_split = "val"  # the split a trainer's held-out metrics read when none is named
    max_logged_per_reason = 20
    cache_size = 64

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size
        self.scenes: list[SceneRecord] = []
        self.skipped = 0
        self.skip_reasons: Counter = Counter()
        self._cache: OrderedDict[int, list[ViewRecord]] = OrderedDict()

    # --------------------------------------------------------------- skip accounting
    def skip(self, reason: str, where, detail: str = "") -> None:
        """Count one skipped item under `reason` and log a warning naming `where` (a file)."""
        self.skipped += 1
        self.skip_reasons[reason] += 1
        n = self.skip_reasons[reason]
        if n <= self.max_logged_per_reason:
            last = n == self.max_logged_per_reason
            more = " (further skips of this kind are counted, not logged)" if last else ""
            log.warning("%s: skipping %s: %s%s%s", type(self).__name__, where, reason,
                        f" ({detail})" if detail else "", more)

    # --------------------------------------------------------------- index access
    def __len__(self) -> int:
        return len(self.scenes)

    def _parse_views(self, scene: SceneRecord) -> list[ViewRecord]:
        raise NotImplementedError(f"{type(self).__name__} indexes its views eagerly")

    def scene_views(self, i: int) -> list[ViewRecord]:
        """The views of scene `i` (cameras only, no image decoding); [] if the scene is corrupt
        (counted as skipped)."""
        scene = self.scenes[i]
        if scene.views is not None:
            return scene.views
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        try:
            views = self._parse_views(scene)
        except (ValueError, OSError, GeometryError) as e:
            self.skip("corrupt scene", scene.path or scene.scene_id, str(e))
            views = []
        self._cache[i] = views
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return views

    def view_poses(self, i: int) -> np.ndarray:
        """(N, 4, 4) w2c of scene `i`'s views (OpenCV axes), without decoding images."""
        views = self.scene_views(i)
        return np.stack([v.w2c for v in views]) if views else np.zeros((0, 4, 4))

    # --------------------------------------------------------------- decoding
    def _decode(self, view: ViewRecord, size: int | None):
        """(image, K) of one view, or None (skipped and counted) if it cannot be used."""
        try:
            img = load_image(view.image_path)
        except ImageReadError as e:
            reason = "missing image" if "not found" in str(e) else "unreadable image"
            self.skip(reason, view.image_path, str(e))
            return None
        h, w = img.shape[:2]
        if view.expected_hw is not None and tuple(view.expected_hw) != (h, w):
            self.skip("image size mismatch", view.image_path,
                      f"annotation says {view.expected_hw[0]}x{view.expected_hw[1]} (HxW), file is {h}x{w}")
            return None
        try:
            K = view.K if view.K is not None else view.intrinsics_fn(w, h)
            if size is not None:
                img, K = center_crop_resize(img, K, size)
        except (GeometryError, ValueError) as e:
            self.skip("bad intrinsics", view.image_path, str(e))
            return None
        return img, np.asarray(K, dtype=np.float64)

    def load(self, i: int, view_indices=None, size: int | None = None) -> MultiViewSample | None:
        """Decode views `view_indices` (default all) of scene `i` into a MultiViewSample.

        `size` overrides the reader's image_size for this call. Views that fail to decode are
        skipped (counted); returns None when fewer than `min_views` views remain."""
        views = self.scene_views(i)
        scene = self.scenes[i]
        idx = range(len(views)) if view_indices is None else [int(k) for k in view_indices]
        size = self.image_size if size is None else size
        images, Ks, w2cs, ids = [], [], [], []
        for k in idx:
            v = views[k]
            out = self._decode(v, size)
            if out is None:
                continue
            if images and out[0].shape != images[0].shape:
                self.skip("image size differs within scene", v.image_path,
                          f"{out[0].shape[:2]} vs {images[0].shape[:2]}; set image_size to crop/resize")
                continue
            images.append(out[0])
            Ks.append(out[1])
            w2cs.append(v.w2c)
            ids.append(v.view_id)
        if len(images) < max(self.min_views, 1):
            return None
        return MultiViewSample(np.stack(images), np.stack(Ks), np.stack(w2cs).astype(np.float64),
                               scene_id=scene.scene_id, category=scene.category, view_ids=ids)

    def __getitem__(self, i: int) -> MultiViewSample:
        """All views of scene `i`. A scene that cannot give `min_views` views is skipped
        (counted) and the next one is returned instead; raises RuntimeError only if no scene
        of the data set can be loaded."""
        n = len(self)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        if not -n <= i < n:
            raise IndexError(f"scene index {i} out of range for {n} scenes")
        for k in range(n):
            j = (i + k) % n
            sample = self.load(j)
            if sample is not None:
                return sample
            self.skip("scene has too few usable views", self.scenes[j].path or self.scenes[j].scene_id)
        raise RuntimeError(f"{type(self).__name__}: no scene could be loaded "
                           f"(skip reasons: {dict(self.skip_reasons)})")


# name -> "module:Class" under training.datasets; imported only when built
DATASETS = {
    "synthetic": "synthetic:SyntheticDataset",
    "objaverse": "objaverse:ObjaverseDataset",
    "co3d": "co3d:CO3DDataset",
    "re10k": "re10k:RealEstate10KDataset",
    "mvimgnet": "mvimgnet:MVImgNetDataset",
}


def dataset_class(name: str):
    """The reader class registered under `name` (imported lazily)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    module, cls = DATASETS[name].split(":")
    try:
        mod = importlib.import_module(f"{__name__}.{module}")
    except ModuleNotFoundError as e:
        raise ValueError(f"dataset {name!r}: its reader module training/datasets/{module}.py "
                         f"is not available ({e})") from e
    return getattr(mod, cls)


def build_dataset(name: str, root, split: str = "train", **kw):
    """Construct the reader `name` on `root` for `split`; extra keywords go to the reader
    (ValueError naming any the reader does not take)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset {name!r}: root directory {root} does not exist")
    cls = dataset_class(name)
    taken = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kw) - set(taken))
    if unknown:
        raise ValueError(f"dataset {name!r}: its reader takes no option {unknown}")
    return cls(root, split, **kw)


# what a missing or wrong model directory, data root or split raises (ModelNotFoundError,
# ModelFormatError and SplitNotFoundError included): the command-line tools that load a model
# and read a split print it as one line and exit 2
INPUT_ERRORS = (FileNotFoundError, ValueError)


def parse_split_fractions(text: str) -> dict[str, float]:
    """`train=0.8,val=0.1,test=0.1` (a command line's --split-fractions) -> the hash_split shares.
    ValueError unless every item is NAME=SHARE, the shares >= 0 and summing to 1."""
    out = {}
    for item in text.split(","):
        name, eq, share = item.partition("=")
        try:
            value = float(share) if eq and name.strip() else None
        except ValueError:
            value = None
        if value is None:
            raise ValueError(f"--split-fractions expects NAME=SHARE,... (e.g. train=0.8,val=0.1,test=0.1), "
                             f"got {text!r}")
        out[name.strip()] = value
    check_split_fractions(out)
    return out


def add_split_fractions_argument(ap) -> None:
    """--split-fractions for a command line that reads a split with build_dataset."""
    ap.add_argument("--split-fractions", type=parse_split_fractions, default=None, metavar="NAME=SHARE,...",
                    help="the hash split's shares for readers that split scenes by hash (objaverse "
                         "without a split file, co3d without a set list, mvimgnet); default "
                         "train=0.9,val=0.05,test=0.05")


def reader_options(args) -> dict:
    """build_dataset keywords from add_split_fractions_argument's option (none when not given)."""
    return {} if args.split_fractions is None else {"split_fractions": args.split_fractions}

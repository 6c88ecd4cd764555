"""Pre-tokenised training data: memory-mapped numpy shards plus one JSON manifest.

Why: the transformer never sees pixels. Tokenising every view with the frozen tokenizers once,
instead of at every step, makes a training step cost only the transformer.

Scheme (camera tokens depend on the PAIR: the target camera is expressed relative to the
observation, so they cannot be stored per view):
- per scene: the image tokens of every view (one row per view);
- per sampled pair (observation view a, target view b): the camera tokens of camera b relative to
  camera a (the observation becomes the identity, the scene normalised as the tokenizer was
  trained), plus that relative pose and the pair's K, for evaluation. A fixed number of pairs
  per scene is drawn at pre-tokenisation time (training/pretokenize.py).

On disk, `<root>/`:

    manifest.json                       written LAST (atomically): a directory without it is
                                        an unfinished pre-tokenisation and is refused
    shard_00000.views.npy               (V, n) image tokens of every view in the shard
    shard_00000.pairs.npy               (P, 2) int64 rows (observation view, target view),
                                        indices into that shard's views
    shard_00000.cameras.npy             (P, n) raw camera codes of the target relative to the
                                        observation (no vocabulary offset)
    shard_00000.rel_w2c.npy             (P, 4, 4) float64 relative world-to-camera of the target
                                        in the observation's frame (OpenCV axes, normalised
                                        scene scale)
    shard_00000.K.npy                   (P, 3, 3) float64 intrinsics of the target crop
    shard_00000.pair_scene.npy          (P,) int64 index into manifest["scenes"]

Token arrays are uint16 when the codebook fits (image and camera codebooks <= 65536), else
int32; token grids are flattened row-major. Every file is written through a temporary file and
renamed, so a file is either complete or absent.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SHARD_ARRAYS = ("views", "pairs", "cameras", "rel_w2c", "K", "pair_scene")


class ShardFormatError(ValueError):
    """A token-shard directory is missing, unfinished or inconsistent."""


def token_dtype(image_vocab: int, camera_vocab: int) -> np.dtype:
    """uint16 when every code fits in 16 bits, else int32."""
    return np.dtype(np.uint16) if max(image_vocab, camera_vocab) <= 65536 else np.dtype(np.int32)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def shard_file(root: Path, shard: int, array: str) -> Path:
    return Path(root) / f"shard_{shard:05d}.{array}.npy"


@dataclass
class _Pending:
    views: list = field(default_factory=list)
    pairs: list = field(default_factory=list)
    cameras: list = field(default_factory=list)
    rel_w2c: list = field(default_factory=list)
    K: list = field(default_factory=list)
    pair_scene: list = field(default_factory=list)
    n_views: int = 0


class ShardWriter:
    """Accumulates scenes and writes shards of about `pairs_per_shard` pairs.

    Use as a context manager or call `close()`; the manifest is written only by `close()`.
    `metadata` (JSON-able) is stored in the manifest (tokenizer directories, seed, ...)."""

    def __init__(self, root, grid: tuple[int, int], image_vocab: int, camera_vocab: int,
                 pairs_per_shard: int = 4096, metadata: dict | None = None):
        self.root = Path(root)
        if (self.root / MANIFEST).exists():
            raise ShardFormatError(f"{self.root} already holds a finished token-shard set; "
                                   "choose an empty directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self.grid = (int(grid[0]), int(grid[1]))
        self.n = self.grid[0] * self.grid[1]
        self.image_vocab, self.camera_vocab = int(image_vocab), int(camera_vocab)
        self.dtype = token_dtype(self.image_vocab, self.camera_vocab)
        self.pairs_per_shard = int(pairs_per_shard)
        self.metadata = dict(metadata or {})
        self.scenes: list[dict] = []
        self.shards: list[dict] = []
        self.skipped: dict[str, int] = {}
        self._pending = _Pending()
        self._closed = False

    def skip(self, reason: str) -> None:
        """Count a corrupt or unusable sample under `reason` (reported in the manifest)."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add_scene(self, scene_id: str, category: str, image_tokens, pairs, camera_tokens, rel_w2c, K) -> None:
        """Add one scene.

        image_tokens: (V, n) image codes of its views (row-major grids);
        pairs: (P, 2) (observation view, target view) indices into those V views;
        camera_tokens: (P, n) raw camera codes of each target camera relative to its observation;
        rel_w2c: (P, 4, 4) relative world-to-camera of the target in the observation's camera
        frame (OpenCV axes, x right, y down, z forward; scene-normalised units);
        K: (P, 3, 3) pixel intrinsics of the target view crop (OpenCV convention)."""
        if self._closed:
            raise ShardFormatError("ShardWriter is closed")
        img = np.asarray(image_tokens)
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        cams = np.asarray(camera_tokens)
        rel = np.asarray(rel_w2c, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        p = len(pairs)
        if img.ndim != 2 or img.shape[1] != self.n:
            raise ShardFormatError(f"scene {scene_id!r}: image tokens must be (V, {self.n}), got {img.shape}")
        if cams.shape != (p, self.n) or rel.shape != (p, 4, 4) or K.shape != (p, 3, 3):
            raise ShardFormatError(f"scene {scene_id!r}: expected camera tokens ({p}, {self.n}), rel_w2c "
                                   f"({p}, 4, 4), K ({p}, 3, 3); got {cams.shape}, {rel.shape}, {K.shape}")
        if p and (pairs.min() < 0 or pairs.max() >= len(img)):
            raise ShardFormatError(f"scene {scene_id!r}: pair indices outside [0, {len(img)})")
        if img.size and (img.min() < 0 or img.max() >= self.image_vocab):
            raise ShardFormatError(f"scene {scene_id!r}: image tokens outside [0, {self.image_vocab})")
        if cams.size and (cams.min() < 0 or cams.max() >= self.camera_vocab):
            raise ShardFormatError(f"scene {scene_id!r}: camera tokens outside [0, {self.camera_vocab})")
        scene_index = len(self.scenes)
        self.scenes.append({"id": str(scene_id), "category": str(category), "views": int(len(img)),
                            "pairs": int(p), "shard": len(self.shards)})
        pend = self._pending
        pend.views.append(img.astype(self.dtype))
        pend.pairs.append(pairs + pend.n_views)
        pend.n_views += len(img)
        pend.cameras.append(cams.astype(self.dtype))
        pend.rel_w2c.append(rel)
        pend.K.append(K)
        pend.pair_scene.append(np.full(p, scene_index, dtype=np.int64))
        if sum(len(x) for x in pend.pairs) >= self.pairs_per_shard:
            self._flush()

    def _flush(self) -> None:
        pend = self._pending
        if not pend.views:
            return
        index = len(self.shards)
        arrays = {
            "views": np.concatenate(pend.views),
            "pairs": np.concatenate(pend.pairs),
            "cameras": np.concatenate(pend.cameras).reshape(-1, self.n).astype(self.dtype),
            "rel_w2c": np.concatenate(pend.rel_w2c).reshape(-1, 4, 4),
            "K": np.concatenate(pend.K).reshape(-1, 3, 3),
            "pair_scene": np.concatenate(pend.pair_scene),
        }
        for name, arr in arrays.items():
            _atomic_save(shard_file(self.root, index, name), arr)
        self.shards.append({"index": index, "views": int(len(arrays["views"])),
                            "pairs": int(len(arrays["pairs"]))})
        self._pending = _Pending()

    def close(self) -> Path:
        """Flush the last shard and write the manifest (atomically). Returns the manifest path."""
        if self._closed:
            return self.root / MANIFEST
        self._flush()
        manifest = {
            "format_version": FORMAT_VERSION,
            "grid": list(self.grid),
            "image_vocab": self.image_vocab,
            "camera_vocab": self.camera_vocab,
            "dtype": self.dtype.name,
            "num_pairs": int(sum(s["pairs"] for s in self.shards)),
            "num_views": int(sum(s["views"] for s in self.shards)),
            "shards": self.shards,
            "scenes": self.scenes,
            "skipped": self.skipped,
            "metadata": self.metadata,
        }
        _atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        self._closed = True
        return self.root / MANIFEST

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        return False


def read_manifest(root) -> dict:
    """The manifest of a finished shard directory; ShardFormatError names what is wrong."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ShardFormatError(f"{root}: no {MANIFEST} (not a token-shard directory, or pre-tokenisation "
                               "did not finish)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardFormatError(f"{path}: not valid JSON ({e})") from e
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardFormatError(f"{path}: format_version {manifest.get('format_version')!r}, "
                               f"this code reads {FORMAT_VERSION}")
    return manifest


class TokenShardDataset(torch.utils.data.Dataset):
    """Training pairs from a shard directory, read through numpy memory maps.

    Item i is a dict: observation (n,) long image codes; image (n,) long image codes of the
    target view; camera (n,) long raw camera codes of the target relative to the observation;
    rel_w2c (4,4) float64 (target in the observation's OpenCV camera frame); K (3,3) float64;
    scene (int index into manifest["scenes"]). With siblings=True also sibling_camera (n,) long:
    the camera codes of another target of the same observation (the next pair of that
    observation view in shard order, cyclically; `sibling_row`): the scene from another side,
    and has_sibling (bool; False when the observation has one target, sibling_camera then its
    own camera). Memory maps open lazily in each worker process."""

    def __init__(self, root, siblings: bool = False):
        self.root = Path(root)
        self.siblings = siblings
        self._sibling_rows: dict[int, np.ndarray] = {}
        self.manifest = read_manifest(self.root)
        self.grid = tuple(self.manifest["grid"])
        self.n = self.grid[0] * self.grid[1]
        for s in self.manifest["shards"]:
            for name in SHARD_ARRAYS:
                if not shard_file(self.root, s["index"], name).is_file():
                    raise ShardFormatError(f"{self.root}: shard {s['index']} lacks {name}.npy")
        counts = np.array([s["pairs"] for s in self.manifest["shards"]], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self._maps: dict[int, dict[str, np.ndarray]] = {}

    @property
    def scenes(self) -> list[dict]:
        return self.manifest["scenes"]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, index: int) -> dict[str, np.ndarray]:
        if index not in self._maps:
            maps = {name: np.load(shard_file(self.root, index, name), mmap_mode="r") for name in SHARD_ARRAYS}
            info = self.manifest["shards"][index]
            if len(maps["pairs"]) != info["pairs"] or len(maps["views"]) != info["views"]:
                raise ShardFormatError(f"{self.root}: shard {index} sizes disagree with the manifest")
            if maps["views"].shape[1:] != (self.n,) or maps["cameras"].shape[1:] != (self.n,):
                raise ShardFormatError(f"{self.root}: shard {index} token grids are not {self.n} long")
            self._maps[index] = maps
        return self._maps[index]

    def pair_scenes(self) -> np.ndarray:
        """(P,) int64 scene index (into manifest["scenes"]) of every pair, in pair order, read from
        the shards' small pair_scene arrays without loading any tokens."""
        if not self.manifest["shards"]:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.asarray(self._shard(s["index"])["pair_scene"], dtype=np.int64)
                               for s in self.manifest["shards"]])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, row) of pair i."""
        if not 0 <= i < len(self):
            raise IndexError(f"pair index {i} outside [0, {len(self)})")
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return shard, int(i - self._starts[shard])

    def sibling_row(self, shard: int, row: int) -> int:
        """Row (in the same shard) of the next pair with the same observation view, in row order,
        cyclically: another target of that observation; `row` itself when it has no other."""
        if shard not in self._sibling_rows:
            obs = np.asarray(self._shard(shard)["pairs"][:, 0])
            order = np.argsort(obs, kind="stable")
            nxt = np.empty(len(obs), dtype=np.int64)
            starts = np.flatnonzero(np.r_[True, obs[order][1:] != obs[order][:-1]])
            for a, b in zip(starts, np.r_[starts[1:], len(order)]):
                nxt[order[a:b]] = np.roll(order[a:b], -1)
            self._sibling_rows[shard] = nxt
        return int(self._sibling_rows[shard][row])

    def __getitem__(self, i: int) -> dict:
        shard, row = self.locate(int(i))
        m = self._shard(shard)
        obs_view, tgt_view = (int(v) for v in m["pairs"][row])
        item = {
            "observation": torch.from_numpy(m["views"][obs_view].astype(np.int64)),
            "image": torch.from_numpy(m["views"][tgt_view].astype(np.int64)),
            "camera": torch.from_numpy(m["cameras"][row].astype(np.int64)),
            "rel_w2c": torch.from_numpy(np.array(m["rel_w2c"][row])),
            "K": torch.from_numpy(np.array(m["K"][row])),
            "scene": int(m["pair_scene"][row]),
        }
        if self.siblings:
            other = self.sibling_row(shard, row)
            item["sibling_camera"] = torch.from_numpy(m["cameras"][other].astype(np.int64))
            item["has_sibling"] = other != row
        return item

    def __getstate__(self):  # memory maps are re-opened in each DataLoader worker
        state = self.__dict__.copy()
        state["_maps"] = {}
        state["_sibling_rows"] = {}
        return state


def collate(items: list[dict]) -> dict:
    """Stack TokenShardDataset items into a batch dict of tensors."""
    keys = ("observation", "image", "camera", "rel_w2c", "K")
    keys += ("sibling_camera",) if "sibling_camera" in items[0] else ()
    out = {k: torch.stack([it[k] for it in items]) for k in keys}
    out["scene"] = torch.tensor([it["scene"] for it in items], dtype=torch.long)
    if "has_sibling" in items[0]:
        out["has_sibling"] = torch.tensor([it["has_sibling"] for it in items], dtype=torch.bool)
    return out

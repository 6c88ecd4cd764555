"""The tokenizer API: images <-> image tokens, cameras <-> camera tokens.

    tok = ImageTokenizer.from_dir("models/image_tokenizer")      # or engine.onnx_tokenizer.load_tokenizer
    ids = tok.encode(rgb_uint8)        # (H, W, 3) or (B, H, W, 3) uint8 RGB -> (B, h, w) int64
    img = tok.decode(ids)              # -> (B, 3, H, W) float32 RGB in [-1, 1]
    rgb = gst_ros.preprocess.from_model_tensor(img)   # -> (B, H, W, 3) uint8

    cam = CameraTokenizer.from_dir("models/camera_tokenizer")
    ids = cam.encode(K, w2c, image_size=(W, H))   # -> (B, h, w) int64, same grid as the image tokens
    fit = cam.decode(ids, image_size=(W, H))      # -> gst_ros.geometry.CameraFit (w2c, K, residual)

Conventions:
- Images are RGB (not BGR). uint8 arrays are (H, W, 3) / (B, H, W, 3); float tensors are
  (B, 3, H, W) in [-1, 1]. The tokenizer takes square images of its `resolution`; bring other
  images there with gst_ros.preprocess.center_crop_resize (which adjusts K the same way).
- Cameras: K (3, 3) / (B, 3, 3) pixel intrinsics of an image of `image_size` = (width, height)
  (OpenCV / CameraInfo convention); w2c (4, 4) / (B, 4, 4) world-to-camera, OpenCV axes, already
  expressed relative to the reference camera (geometry.relative_pose) with the scene scaled so the
  reference camera is at distance ~1 from the scene centre. The Plücker map is built for the
  tokenizer's map grid (resolution x resolution) with K rescaled from image_size to that grid.
  Translation is only known up to scale.

The network behind a tokenizer (its "core") is anything with `config` (a VQConfig),
`encode_indices(x) -> ids` and `decode_indices(ids) -> x`: the torch VQModel here, or the ONNX
Runtime backend in gst_ros.engine.onnx_tokenizer.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from gst_ros.models.io import config_from_dict, load_model_dir, load_state_dict_strict
from gst_ros.models.vq import VQConfig, VQModel
from gst_ros.preprocess import to_model_tensor

IMAGE_KIND, CAMERA_KIND = "image_tokenizer", "camera_tokenizer"


def load_vq_model(directory, kind: str | None = None, device="cpu") -> VQModel:
    """A VQModel from a model directory (gst_ros.models.io format), in eval mode.
    kind: "image_tokenizer", "camera_tokenizer" or None (either)."""
    meta, state = load_model_dir(directory, kind)
    if meta["kind"] not in (IMAGE_KIND, CAMERA_KIND):
        raise ValueError(f"{directory} holds a {meta['kind']!r} model, not a tokenizer")
    model = VQModel(config_from_dict(VQConfig, meta["config"]))
    load_state_dict_strict(model, state, str(directory))
    return model.to(device).eval()


# ---------------------------------------------------------------- image input

def images_to_tensor(images) -> torch.Tensor:
    """Tokenizer input from uint8 RGB (H, W, 3) / (B, H, W, 3) (numpy or torch; converted with
    gst_ros.preprocess.to_model_tensor) or a float tensor (B, 3, H, W) already in [-1, 1]:
    float32 (B, 3, H, W)."""
    if isinstance(images, np.ndarray) and images.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8 RGB (H, W, 3), got dtype {images.dtype}")
    if isinstance(images, np.ndarray) or (isinstance(images, torch.Tensor) and images.dtype == torch.uint8):
        x = to_model_tensor(images)
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4:
            raise ValueError(f"uint8 images must be (H, W, 3) or (B, H, W, 3) RGB, got {tuple(images.shape)}")
        return x
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(f"images must be uint8 RGB or a float tensor, got {type(images).__name__}")
    x = images[None] if images.ndim == 3 else images
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) RGB in [-1, 1], got {tuple(images.shape)}")
    return x.float()


# ---------------------------------------------------------------- tokenizers

class _Tokenizer:
    kind = ""

    def __init__(self, core, device="cpu"):
        self.core = core
        self.config: VQConfig = core.config
        self.device = torch.device(device)

    @classmethod
    def from_dir(cls, directory, device="cpu"):
        """Torch backend from a model directory (for ONNX Runtime see engine.onnx_tokenizer)."""
        return cls(load_vq_model(directory, cls.kind, device), device)

    @property
    def resolution(self) -> int:
        """Side of the square input (image pixels or Plücker map cells)."""
        return self.config.resolution

    @property
    def grid(self) -> int:
        """Side of the token grid."""
        return self.config.token_grid

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resolution
        if x.shape[-2:] != (r, r):
            raise ValueError(f"{self.kind}: input must be {r}x{r}, got {tuple(x.shape[-2:])} "
                             f"(use gst_ros.preprocess.center_crop_resize first)")
        return self.core.encode_indices(x.to(self.device)).cpu()

    def _decode(self, tokens) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            tokens = tokens[None]
        g = self.grid
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (g, g):
            raise ValueError(f"{self.kind}: tokens must be (B, {g}, {g}), got {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{self.kind}: tokens must be int64, got {tokens.dtype}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.codebook_size:
            raise ValueError(f"{self.kind}: token ids out of range [0, {self.codebook_size}): "
                             f"min {int(tokens.min())}, max {int(tokens.max())}")
        return self.core.decode_indices(tokens.long().to(self.device)).float().cpu()


class ImageTokenizer(_Tokenizer):
    """RGB images <-> image token grids (see the module docstring for conventions)."""

    kind = IMAGE_KIND

    def encode(self, images) -> torch.Tensor:
        """uint8 RGB (H, W, 3) / (B, H, W, 3) or float (B, 3, H, W) in [-1, 1] -> (B, h, w) int64."""
        return self._encode(images_to_tensor(images))

    def decode(self, tokens) -> torch.Tensor:
        """(B, h, w) / (h, w) int64 -> float32 (B, 3, H, W) RGB in [-1, 1]
        (uint8 pixels: gst_ros.preprocess.from_model_tensor)."""
        return self._decode(tokens)


class CameraTokenizer(_Tokenizer):
    """Cameras (K, w2c) <-> Plücker maps <-> camera token grids (see the module docstring)."""

    kind = CAMERA_KIND

    def map_intrinsics(self, K, image_size) -> np.ndarray:
        """K (3, 3) / (B, 3, 3) of an image of image_size = (width, height) -> (B, 3, 3) float64
        intrinsics of the (resolution x resolution) Plücker map grid covering the same image."""
        from gst_ros.geometry import crop_resize_intrinsics

        K = np.asarray(K.cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
        K = K[None] if K.ndim == 2 else K
        if K.ndim != 3 or K.shape[1:] != (3, 3):
            raise ValueError(f"K must be (3, 3) or (B, 3, 3), got {K.shape}")
        w, h = _size_pair(image_size)
        m = self.resolution
        return np.stack([crop_resize_intrinsics(k, (0, 0, w, h), (m, m)) for k in K])

    def plucker(self, K, w2c, image_size) -> torch.Tensor:
        """Plücker maps (B, 6, m, m) float32 of cameras (K of an image_size=(W, H) image, w2c
        world-to-camera in the reference camera's frame), channels in geometry.PLUCKER_ORDER."""
        from gst_ros.geometry import plucker_map

        Km = self.map_intrinsics(K, image_size)
        w2c = np.asarray(w2c.cpu() if isinstance(w2c, torch.Tensor) else w2c, dtype=np.float64)
        w2c = w2c[None] if w2c.ndim == 2 else w2c
        if len(Km) == 1 and w2c.ndim == 3 and len(w2c) > 1:
            Km = np.repeat(Km, len(w2c), axis=0)  # one K for all cameras
        if w2c.ndim != 3 or w2c.shape[1:] != (4, 4) or len(w2c) != len(Km):
            raise ValueError(f"w2c must be (4, 4) or (B, 4, 4) matching K's batch {len(Km)}, got {w2c.shape}")
        return plucker_map(Km, w2c, self.resolution, self.resolution).float()

    def encode(self, K, w2c, image_size) -> torch.Tensor:
        """Cameras -> camera tokens (B, h, w) int64 (K for an image of image_size = (W, H))."""
        return self.encode_maps(self.plucker(K, w2c, image_size))

    def encode_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """Plücker maps (B, 6, m, m) float -> (B, h, w) int64."""
        maps = torch.as_tensor(maps)
        if maps.ndim != 4 or maps.shape[1] != 6:
            raise ValueError(f"Plücker maps must be (B, 6, H, W), got {tuple(maps.shape)}")
        return self._encode(maps.float())

    def decode_maps(self, tokens) -> torch.Tensor:
        """(B, h, w) int64 -> Plücker maps (B, 6, m, m) float32."""
        return self._decode(tokens)

    def decode(self, tokens, K=None, image_size=None):
        """Camera tokens -> geometry.CameraFit (w2c (B, 4, 4) relative to the reference camera,
        translation up to scale; K (B, 3, 3); residual (B,)).
        K: known intrinsics of an image of image_size (else estimated from the rays). The
        returned K is for image_size when given, else for the m x m map grid."""
        from gst_ros.geometry import cameras_from_plucker, crop_resize_intrinsics

        maps = self.decode_maps(tokens)
        m = self.resolution
        K_map = None
        if K is not None:
            if image_size is None:
                raise ValueError("decode: K given without the image_size it belongs to")
            K_map = torch.from_numpy(self.map_intrinsics(K, image_size))
            if len(K_map) == 1 and len(maps) > 1:
                K_map = K_map.expand(len(maps), 3, 3)
        fit = cameras_from_plucker(maps, K=K_map)
        if image_size is not None:
            w, h = _size_pair(image_size)
            Ks = [crop_resize_intrinsics(np.asarray(k.detach().cpu(), dtype=np.float64), (0, 0, m, m), (w, h))
                  for k in fit.K]
            fit = dataclasses.replace(fit, K=torch.as_tensor(np.stack(Ks)).to(fit.K.dtype))
        return fit


def _size_pair(image_size) -> tuple[int, int]:
    if isinstance(image_size, int | np.integer):
        return int(image_size), int(image_size)
    w, h = image_size
    return int(w), int(h)

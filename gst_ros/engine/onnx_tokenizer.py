"""ONNX export of the VQ tokenizers and an ONNX Runtime backend with the torch tokenizer's API.

Export writes two graphs next to each other (dynamic batch, fixed spatial size = the model's
resolution), plus export.json recording the config and the SHA-256 of the weights they came from:

    <onnx_dir>/encoder.onnx   x (B, C, R, R) float32  -> ids (B, g, g) int64
    <onnx_dir>/decoder.onnx   ids (B, g, g) int64     -> y (B, C_out, R, R) float32

    gst export-onnx models/image_tokenizer            # -> models/image_tokenizer/onnx/
    tok = load_tokenizer("models/image_tokenizer", backend="onnx")   # same API as backend="torch"

ONNX Runtime uses the CUDA provider when it is available (onnxruntime-gpu), the CPU one otherwise.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from gst_ros.models.io import WEIGHTS_FILE, ModelFormatError, config_from_dict, load_model_dir
from gst_ros.models.tokenizer import CAMERA_KIND, IMAGE_KIND, CameraTokenizer, ImageTokenizer, load_vq_model
from gst_ros.models.vq import VQConfig, VQModel

ENCODER_FILE, DECODER_FILE, EXPORT_META = "encoder.onnx", "decoder.onnx", "export.json"
BACKENDS = ("torch", "onnx")


class _EncoderGraph(torch.nn.Module):
    def __init__(self, model: VQModel):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        return m.quantize.indices(m.quant_conv(m.encoder(x)))


class _DecoderGraph(torch.nn.Module):
    def __init__(self, model: VQModel):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model.decode(self.model.quantize.lookup(ids))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(model: VQModel, out_dir, opset: int = 17, weights_sha256: str = "") -> tuple[Path, Path]:
    """Export `model`'s encoder (input -> ids) and decoder (ids -> output) to out_dir.
    Returns (encoder_path, decoder_path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    model = model.float().cpu().eval()
    x = torch.zeros(2, cfg.in_channels, cfg.resolution, cfg.resolution)
    ids = torch.zeros(2, cfg.token_grid, cfg.token_grid, dtype=torch.int64)
    enc_path, dec_path = out_dir / ENCODER_FILE, out_dir / DECODER_FILE
    with torch.no_grad():
        torch.onnx.export(_EncoderGraph(model), (x,), str(enc_path), input_names=["x"], output_names=["ids"],
                          dynamic_axes={"x": {0: "batch"}, "ids": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
        torch.onnx.export(_DecoderGraph(model), (ids,), str(dec_path), input_names=["ids"],
                          output_names=["y"], dynamic_axes={"ids": {0: "batch"}, "y": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    meta = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
            "weights_sha256": weights_sha256, "opset": opset}
    (out_dir / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return enc_path, dec_path


def export_model_dir(model_dir, out_dir=None, opset: int = 17) -> tuple[Path, Path]:
    """Export the tokenizer saved in model_dir; out_dir defaults to <model_dir>/onnx."""
    model_dir = Path(model_dir)
    model = load_vq_model(model_dir)
    return export_onnx(model, out_dir or model_dir / "onnx", opset, _sha256(model_dir / WEIGHTS_FILE))


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build offers it, then CPU."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class OnnxVQ:
    """A tokenizer core backed by ONNX Runtime: config, encode_indices, decode_indices (torch in/out)."""

    def __init__(self, onnx_dir, config: VQConfig, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        for f in (ENCODER_FILE, DECODER_FILE):
            if not (onnx_dir / f).is_file():
                raise ModelFormatError(f"{onnx_dir / f} is missing: export the tokenizer to ONNX first "
                                       f"(`gst export-onnx <tokenizer dir>`, or `gst export-onnx <GST model "
                                       f"dir>` for both of a model's tokenizers)")
        self.config = config
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = providers or default_providers()
        self.encoder = ort.InferenceSession(str(onnx_dir / ENCODER_FILE), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(onnx_dir / DECODER_FILE), opts, providers=providers)

    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.encoder.run(["ids"], {"x": arr})[0])

    def decode_indices(self, ids: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(ids.detach().cpu().numpy(), dtype=np.int64)
        return torch.from_numpy(self.decoder.run(["y"], {"ids": arr})[0])


def load_tokenizer(model_dir, backend: str = "torch", device="cpu", onnx_dir=None,
                   providers: list[str] | None = None, check_weights: bool = True):
    """An ImageTokenizer or CameraTokenizer (by the directory's kind) on the chosen backend.

    backend "torch": the VQModel on `device`. backend "onnx": ONNX Runtime sessions from onnx_dir
    (default <model_dir>/onnx); with check_weights, refuses an export made from other weights."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown tokenizer backend {backend!r}; expected one of {BACKENDS}")
    model_dir = Path(model_dir)
    if backend == "torch":
        model = load_vq_model(model_dir, None, device)
        cls = ImageTokenizer if _kind(model_dir) == IMAGE_KIND else CameraTokenizer
        return cls(model, device)
    meta, _ = load_model_dir(model_dir)
    if meta["kind"] not in (IMAGE_KIND, CAMERA_KIND):
        raise ValueError(f"{model_dir} holds a {meta['kind']!r} model, not a tokenizer")
    cfg = config_from_dict(VQConfig, meta["config"])
    onnx_dir = Path(onnx_dir) if onnx_dir else model_dir / "onnx"
    if check_weights and (onnx_dir / EXPORT_META).is_file():
        want = json.loads((onnx_dir / EXPORT_META).read_text()).get("weights_sha256", "")
        if want and want != _sha256(model_dir / WEIGHTS_FILE):
            raise ValueError(f"{onnx_dir} was exported from different weights than {model_dir}: "
                             f"re-run `gst export-onnx {model_dir}`")
    core = OnnxVQ(onnx_dir, cfg, providers)
    cls = ImageTokenizer if meta["kind"] == IMAGE_KIND else CameraTokenizer
    return cls(core, "cpu")


def _kind(model_dir: Path) -> str:
    return json.loads((model_dir / "config.json").read_text())["kind"]

"""Export a tokenizer's encoder (input -> token ids) and decoder (token ids -> output) to ONNX
with a dynamic batch, and check them against the torch model on random input.

    gst export-onnx models/gst_small/image_tokenizer   # -> models/gst_small/image_tokenizer/onnx/
    gst export-onnx models/gst_small                   # a GST model directory: both its tokenizers
    # then: load_tokenizer(DIR, backend="onnx"), or the engine's / node's tokenizer_backend: onnx

Exit status: 0 when every export matches the torch model, 1 when one fails the parity check,
2 for a directory that is not a tokenizer (or a GST model directory holding two).
"""
from __future__ import annotations

import sys
from pathlib import Path

HELP = "export a tokenizer (or both of a model's) to ONNX for the ONNX Runtime backend"

def add_arguments(parser):
    parser.add_argument("model_dir", help="a tokenizer directory (image_tokenizer or camera_tokenizer), or a "
                                          "GST model directory: then both of its tokenizers")
    parser.add_argument("--out", default=None,
                        help="output folder (default: <tokenizer dir>/onnx; one tokenizer only)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-check", action="store_true", help="skip the torch-vs-ONNX parity check")


def tokenizer_dirs(model_dir) -> list[Path]:
    """The tokenizer directories to export for `model_dir`: itself, or for a GST model directory
    (no config.json of its own, both tokenizer folders inside) its two tokenizers."""
    from gst_ros.models.tokenizer import CAMERA_KIND, IMAGE_KIND  # also the folder names in a model dir

    model_dir = Path(model_dir)
    parts = [model_dir / p for p in (IMAGE_KIND, CAMERA_KIND)]
    if not (model_dir / "config.json").exists() and all((p / "config.json").is_file() for p in parts):
        return parts
    return [model_dir]


def export_and_check(tokenizer_dir: Path, out, opset: int, check: bool) -> bool:
    """Export one tokenizer; with check, compare it with the torch model (printed). True = matches.
    ModelFormatError / ValueError for a directory that is not a tokenizer."""
    import warnings

    import torch

    from gst_ros.engine.onnx_tokenizer import OnnxVQ, export_model_dir
    from gst_ros.models.tokenizer import load_vq_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc, dec = export_model_dir(tokenizer_dir, out, opset)
    print(f"wrote {enc}\nwrote {dec}")
    if not check:
        return True
    model = load_vq_model(tokenizer_dir)
    cfg = model.config
    core = OnnxVQ(enc.parent, cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g) * 2 - 1
    ids_t, ids_o = model.encode_indices(x), core.encode_indices(x)
    same = float((ids_t == ids_o).float().mean())
    err = float((model.decode_indices(ids_t) - core.decode_indices(ids_t)).abs().max())
    print(f"parity: {100 * same:.2f}% identical token ids, decoder max abs diff {err:.2e}")
    return same >= 0.999 and err <= 1e-3


def run(args) -> int:
    dirs = tokenizer_dirs(args.model_dir)
    if len(dirs) > 1 and args.out is not None:
        print(f"gst export-onnx: --out names one folder, but {args.model_dir} holds two tokenizers: "
              f"leave --out out (each goes to <tokenizer>/onnx)", file=sys.stderr)
        return 2
    ok = True
    for d in dirs:
        try:
            ok &= export_and_check(d, args.out, args.opset, not args.no_check)
        except ValueError as e:   # ModelFormatError included
            print(f"gst export-onnx: {e}", file=sys.stderr)
            return 2
    return 0 if ok else 1

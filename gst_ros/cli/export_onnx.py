"""Export a tokenizer's encoder (input -> token ids) and decoder (token ids -> output) to ONNX
with a dynamic batch, and check them against the torch model on random input.

    gst export-onnx models/image_tokenizer            # -> models/image_tokenizer/onnx/
    # then: load_tokenizer("models/image_tokenizer", backend="onnx")
"""
from __future__ import annotations

import sys

HELP = "export a tokenizer to ONNX (encoder + decoder) for the ONNX Runtime backend"


def add_arguments(parser):
    parser.add_argument("model_dir", help="tokenizer model directory (image_tokenizer or camera_tokenizer)")
    parser.add_argument("--out", default=None, help="output folder (default: <model_dir>/onnx)")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-check", action="store_true", help="skip the torch-vs-ONNX parity check")


def run(args) -> int:
    import warnings

    import torch

    from gst_ros.engine.onnx_tokenizer import OnnxVQ, export_model_dir
    from gst_ros.models.io import ModelFormatError
    from gst_ros.models.tokenizer import load_vq_model

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc, dec = export_model_dir(args.model_dir, args.out, args.opset)
    except (ModelFormatError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {enc}\nwrote {dec}")
    if args.no_check:
        return 0
    model = load_vq_model(args.model_dir)
    cfg = model.config
    core = OnnxVQ(enc.parent, cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g)
    x = x * 2 - 1
    ids_t, ids_o = model.encode_indices(x), core.encode_indices(x)
    same = float((ids_t == ids_o).float().mean())
    err = float((model.decode_indices(ids_t) - core.decode_indices(ids_t)).abs().max())
    print(f"parity: {100 * same:.2f}% identical token ids, decoder max abs diff {err:.2e}")
    return 0 if same >= 0.999 and err <= 1e-3 else 1

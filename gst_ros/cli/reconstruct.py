"""Judge an image tokenizer on your own picture: image -> tokens -> image.

The image is centre-cropped to a square and resized to the tokenizer's resolution
(gst_ros.preprocess); OUT.png shows that input and its reconstruction side by side. Prints the
PSNR (dB, over all pixels and channels, 8-bit range) and the share of the codebook that the
image's tokens use.

    gst reconstruct photo.jpg --tokenizer models/image_tokenizer --out recon.png
"""
from __future__ import annotations

import sys

HELP = "encode an image to tokens and decode it back; print PSNR and codebook use"


def add_arguments(parser):
    parser.add_argument("image", help="input image (PNG/JPEG/...; RGBA is composited on white)")
    parser.add_argument("--tokenizer", required=True, help="image tokenizer model directory")
    parser.add_argument("--out", required=True, help="output PNG: input | reconstruction")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")


def run(args) -> int:
    import numpy as np
    from PIL import Image

    from gst_ros.engine.onnx_tokenizer import load_tokenizer
    from gst_ros.geometry import intrinsics_from_fov
    from gst_ros.models.io import ModelFormatError
    from gst_ros.models.quantizer import codebook_usage
    from gst_ros.models.tokenizer import ImageTokenizer
    from gst_ros.preprocess import (
        ImageReadError,
        center_crop_resize,
        from_model_tensor,
        load_image,
        psnr_uint8,
    )

    try:
        rgb = load_image(args.image)
        tok = load_tokenizer(args.tokenizer, backend=args.backend)
    except (ImageReadError, ModelFormatError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not isinstance(tok, ImageTokenizer):
        print(f"error: {args.tokenizer} is not an image tokenizer", file=sys.stderr)
        return 1
    h, w = rgb.shape[:2]
    # the crop needs some intrinsics; they are not used here
    x, _ = center_crop_resize(rgb, intrinsics_from_fov(49.1, w, h), tok.resolution)
    ids = tok.encode(x)
    y = from_model_tensor(tok.decode(ids))[0]
    used = codebook_usage(ids, tok.codebook_size)
    print(f"{args.image}: {x.shape[1]}x{x.shape[0]} -> {ids.shape[1]}x{ids.shape[2]} tokens; "
          f"PSNR {psnr_uint8(x, y):.2f} dB; codebook used {100 * used:.2f}% "
          f"({int(ids.unique().numel())} of {tok.codebook_size} codes)")
    Image.fromarray(np.concatenate([x, y], axis=1)).save(args.out)
    print(f"wrote {args.out}")
    return 0

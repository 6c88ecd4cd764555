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
    parser.add_argument("--out", required=True, help="output PNG: input | reconstruction (folders created)")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="tokenizer backend (onnx: after `gst export-onnx` of the tokenizer)")


def run(args) -> int:
    import numpy as np

    from gst_ros.cli.view import check_image_out, save_png
    from gst_ros.engine.onnx_tokenizer import load_tokenizer
    from gst_ros.geometry import intrinsics_from_fov
    from gst_ros.models.quantizer import codebook_usage
    from gst_ros.models.tokenizer import ImageTokenizer
    from gst_ros.preprocess import center_crop_resize, from_model_tensor, load_image, psnr_uint8

    try:
        check_image_out(args.out)
        rgb = load_image(args.image)
        tok = load_tokenizer(args.tokenizer, backend=args.backend)
    except (ValueError, FileNotFoundError) as e:   # ImageReadError and ModelFormatError included
        print(f"gst reconstruct: {e}", file=sys.stderr)
        return 2
    if not isinstance(tok, ImageTokenizer):
        print(f"gst reconstruct: {args.tokenizer} is not an image tokenizer", file=sys.stderr)
        return 2
    h, w = rgb.shape[:2]
    # the crop needs some intrinsics; they are not used here
    x, _ = center_crop_resize(rgb, intrinsics_from_fov(49.1, w, h), tok.resolution)
    ids = tok.encode(x)
    y = from_model_tensor(tok.decode(ids))[0]
    used = codebook_usage(ids, tok.codebook_size)
    print(f"{args.image}: {x.shape[1]}x{x.shape[0]} -> {ids.shape[1]}x{ids.shape[2]} tokens; "
          f"PSNR {psnr_uint8(x, y):.2f} dB; codebook used {100 * used:.2f}% "
          f"({int(ids.unique().numel())} of {tok.codebook_size} codes)")
    print(f"wrote {save_png(args.out, np.concatenate([x, y], axis=1))}")
    return 0

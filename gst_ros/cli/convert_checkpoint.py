"""Convert a foreign checkpoint (LlamaGen / official GST) into this project's model directory
(config.json + model.safetensors). Every source tensor is listed as mapped or dropped, and every
tensor of ours that the source lacks as new; a mismatch stops with the first offending key.

    gst convert-checkpoint --kind gst-image image-16.pt models/image_tokenizer
    gst convert-checkpoint --kind gst-camera camera-4.pt models/camera_tokenizer
    gst convert-checkpoint --kind gst-gpt gst.pt models/gst
"""
from __future__ import annotations

import sys

HELP = "convert a LlamaGen / GST checkpoint to a gst_ros model directory"


def add_arguments(parser):
    from gst_ros.engine.checkpoints import KINDS

    parser.add_argument("--kind", required=True, choices=sorted(KINDS), help="what the input file holds")
    parser.add_argument("input", help="checkpoint (.pt/.pth/.ckpt, loaded weights_only; or .safetensors)")
    parser.add_argument("output", help="model directory to write")
    parser.add_argument("--quiet", action="store_true", help="print only the totals")


def _shape(state, name):
    t = state.get(name)
    return "x".join(map(str, t.shape)) if t is not None else "?"


def run(args) -> int:
    from gst_ros.engine.checkpoints import KINDS, convert_state_dict, read_foreign_checkpoint
    from gst_ros.models.io import ModelFormatError, save_model_dir

    try:
        foreign = read_foreign_checkpoint(args.input)
        state, config, report = convert_state_dict(args.kind, foreign)
    except (ModelFormatError, ValueError, KeyError) as e:
        print(f"gst convert-checkpoint: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        for src, dst in report["mapped"]:
            print(f"mapped   {src} -> {dst} [{_shape(state, dst)}]")
        for dst in report["new"]:
            print(f"new      {dst} [{_shape(state, dst)}]")
        for src in report["dropped"]:
            print(f"dropped  {src} [{_shape(foreign, src)}]")
    n_params = sum(t.numel() for t in state.values())
    print(f"{args.kind}: {len(report['mapped'])} mapped, {len(report['new'])} new, "
          f"{len(report['dropped'])} dropped of {len(foreign)} source tensors; "
          f"{len(state)} tensors, {n_params / 1e6:.2f}M values")
    save_model_dir(args.output, KINDS[args.kind], config, state,
                   extra={"conversion_kind": args.kind, "converted_from": str(args.input).split("/")[-1]})
    print(f"wrote {args.output}")
    return 0

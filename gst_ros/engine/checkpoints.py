"""Reading foreign checkpoints (LlamaGen, official GST) and converting them to model directories.

Every conversion returns (state_dict, config_dict, report) with
    report = {"mapped": [(src, dst)], "new": [dst], "dropped": [src]}
so that every tensor of the source is accounted for: mapped onto one of ours, or dropped on
purpose (training-only modules); "new" lists our tensors the source lacks (filled with their
initial value). Anything else is an error naming the first offending key or shape.

Kinds:
- llamagen-vq: LlamaGen VQ checkpoints (vq_ds16_c2i.pt, also vq_ds8_*), weights under "model".
- gst-image:   the official GST image-16.pt (a LlamaGen VQ-16 under "model").
- gst-camera:  the official GST camera-4.pt. ASSUMPTION (the file was not available to us): it
  uses LlamaGen's VQ module names with 6 input/output channels, as the GST code builds its
  camera tokenizer from the same family. The architecture is read from the tensor shapes
  (channels, levels, res blocks, codebook), so any depth/width of that family loads.
- llamagen-gpt, gst-gpt: handled by gst_ros.engine.gpt_import.convert_gpt_state_dict.
Key mapping for the VQ kinds: identity after stripping wrapper prefixes ("module." from DDP,
"_orig_mod." from torch.compile); "quantize.codebook_used" is new when absent.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from gst_ros.models.io import ModelFormatError
from gst_ros.models.vq import VQConfig, VQModel

VQ_KINDS = {"llamagen-vq": "image_tokenizer", "gst-image": "image_tokenizer",
            "gst-camera": "camera_tokenizer"}
GPT_KINDS = {"llamagen-gpt": "gst", "gst-gpt": "gst"}
KINDS = {**VQ_KINDS, **GPT_KINDS}  # conversion kind -> gst_ros.models.io model kind
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# training-time modules some VQGAN checkpoints keep beside the model: dropped on purpose
DROPPABLE_PREFIXES = ("loss.", "discriminator.", "perceptual_loss.")
TOKEN_GRID = 16  # GST's token grid: resolution = 16 * downsampling factor


class CheckpointError(ModelFormatError):
    """A foreign checkpoint is unreadable or does not match the expected architecture."""


def read_foreign_checkpoint(path) -> dict[str, torch.Tensor]:
    """Tensors of a .pt/.pth/.ckpt (torch, loaded with weights_only=True) or .safetensors file.
    Weights under "model" (LlamaGen/GST), "state_dict" or "ema" are taken, in that order."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from e
    try:
        # argparse.Namespace (LlamaGen stores its training args) is plain data; nothing else is allowed
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(f"{path}: refusing to unpickle code objects ({msg})") from e
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint ({msg})") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a dict of tensors (or one under 'model'), "
                              f"got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is a {type(obj[bad[0]]).__name__}, not a tensor "
                              f"(top-level keys: {sorted(obj)[:8]})")
    return obj


def strip_wrappers(foreign: dict[str, torch.Tensor]) -> dict[str, tuple[str, torch.Tensor]]:
    """{our name: (source name, tensor)} with wrapper prefixes removed."""
    out = {}
    for src, t in foreign.items():
        name = src
        changed = True
        while changed:
            changed = False
            for p in WRAPPER_PREFIXES:
                if name.startswith(p):
                    name, changed = name[len(p):], True
        if name in out:
            raise CheckpointError(f"two source tensors map to {name!r}: {out[name][0]!r} and {src!r}")
        out[name] = (src, t)
    return out


def _need(sd: dict, key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"not a VQ tokenizer checkpoint: missing {key!r}")
    return sd[key][1] if isinstance(sd[key], tuple) else sd[key]


def infer_vq_config(sd: dict) -> VQConfig:
    """The VQConfig of a LlamaGen-family state dict, read from tensor names and shapes."""
    conv_in = _need(sd, "encoder.conv_in.weight")
    ch, in_ch = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))})
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"encoder.conv_blocks levels are not 0..n-1: {levels}")
    n_res = len({k.split(".")[4] for k in sd if k.startswith("encoder.conv_blocks.0.res.")})
    mult = []
    for i in levels:
        w = _need(sd, f"encoder.conv_blocks.{i}.res.0.conv1.weight")
        if int(w.shape[0]) % ch:
            raise CheckpointError(f"encoder.conv_blocks.{i} width {w.shape[0]} is not a multiple of ch={ch}")
        mult.append(int(w.shape[0]) // ch)
    emb = _need(sd, "quantize.embedding.weight")
    z = _need(sd, "encoder.conv_out.weight")
    out_ch = _need(sd, "decoder.conv_out.weight")
    ds = 2 ** (len(levels) - 1)
    return VQConfig(in_channels=in_ch, out_channels=int(out_ch.shape[0]), resolution=TOKEN_GRID * ds, ch=ch,
                    ch_mult=tuple(mult), num_res_blocks=n_res, z_channels=int(z.shape[0]),
                    codebook_size=int(emb.shape[0]), codebook_embed_dim=int(emb.shape[1]))


def convert_vq_state_dict(kind: str, foreign: dict[str, torch.Tensor]):
    """(state_dict, config_dict, report) for kind llamagen-vq / gst-image / gst-camera."""
    if kind not in VQ_KINDS:
        raise CheckpointError(f"not a VQ conversion kind: {kind!r}; expected one of {sorted(VQ_KINDS)}")
    named = strip_wrappers(foreign)
    dropped = [src for name, (src, _) in named.items() if name.startswith(DROPPABLE_PREFIXES)]
    named = {n: v for n, v in named.items() if not n.startswith(DROPPABLE_PREFIXES)}
    cfg = infer_vq_config(named)
    want_in = 6 if kind == "gst-camera" else 3
    if cfg.in_channels != want_in or cfg.out_channels != want_in:
        raise CheckpointError(f"{kind}: expected {want_in} input/output channels, checkpoint has "
                              f"{cfg.in_channels} in (encoder.conv_in.weight) / {cfg.out_channels} out")
    with torch.device("meta"):
        ref = VQModel(cfg).state_dict()
    unexpected = [n for n in named if n not in ref]
    if unexpected:
        raise CheckpointError(f"{kind}: unexpected tensor {named[unexpected[0]][0]!r} "
                              f"({len(unexpected)} unexpected in all)")
    state, mapped, new = {}, [], []
    for name, meta_t in ref.items():
        if name not in named:
            if name == "quantize.codebook_used":
                state[name] = torch.full(meta_t.shape, -1.0)
                new.append(name)
                continue
            raise CheckpointError(f"{kind}: checkpoint is missing tensor {name!r}")
        src, t = named[name]
        if tuple(t.shape) != tuple(meta_t.shape):
            raise CheckpointError(f"{kind}: shape mismatch for {src!r}: checkpoint {tuple(t.shape)}, "
                                  f"expected {tuple(meta_t.shape)}")
        state[name] = t.detach().to(torch.float32).contiguous()
        mapped.append((src, name))
    from dataclasses import asdict

    return state, asdict(cfg), {"mapped": mapped, "new": new, "dropped": dropped}


def convert_state_dict(kind: str, foreign: dict[str, torch.Tensor]):
    """Dispatch a conversion by kind -> (state_dict, config_dict, report)."""
    if kind in VQ_KINDS:
        return convert_vq_state_dict(kind, foreign)
    if kind in GPT_KINDS:
        from gst_ros.engine.gpt_import import convert_gpt_state_dict

        return convert_gpt_state_dict(kind, foreign)
    raise CheckpointError(f"unknown checkpoint kind {kind!r}; expected one of {sorted(KINDS)}")


def convert_checkpoint(kind: str, in_path, out_dir):
    """Read a foreign checkpoint, convert it, write a model directory. Returns the report."""
    from gst_ros.models.io import save_model_dir

    state, config, report = convert_state_dict(kind, read_foreign_checkpoint(in_path))
    save_model_dir(out_dir, KINDS[kind], config, state,
                   extra={"converted_from": str(Path(in_path).name), "conversion_kind": kind})
    return report

"""Import foreign GPT checkpoints into gst_ros.models.transformer.GST.

    convert_gpt_state_dict(kind, foreign) -> (state_dict, config_dict, report)

kind "llamagen-gpt": a LlamaGen class-conditional GPT (c2i; weights usually under
    checkpoint["model"]). Names (facts of LlamaGen's GPT): tok_embeddings.weight (vocab, dim),
    cls_embedding.embedding_table.weight (num_classes + 1, dim), layers.{i}.attention.wqkv.weight,
    layers.{i}.attention.wo.weight, layers.{i}.feed_forward.{w1,w2,w3}.weight,
    layers.{i}.{attention_norm,ffn_norm}.weight, norm.weight, output.weight (freqs_cis, when a
    file carries it, is a RoPE cache: recomputed here). Mapping:
      - every block tensor, norm.weight: same name, copied;
      - tok_embeddings / output: the image-code rows [0, vocab) are copied; the camera-code rows
        and the two task-token rows are new (embedding ~ normal(0, 0.02), output head zeros);
      - cls_embedding.* is dropped (GST conditions on observation tokens, not a class);
      - QK-Norm LayerNorms (which LlamaGen lacks) are new: weight 1, bias 0.
kind "gst-gpt": the official GST gst.pt (weights under ["model"]). The file is not public to
    this project; ASSUMED names: LlamaGen's plus layers.{i}.attention.q_norm.{weight,bias} and
    k_norm (aliases q_layernorm / k_layernorm are accepted). The vocabulary is
    image + camera + 2 with camera_vocab 2048 unless told otherwise.
Config inference: dim from tok_embeddings, n_layer from the wqkv count, head_dim from the
QK-Norm weight when present, else 64 (LlamaGen and GST use head_dim 64), ffn hidden from w1 (must
match the config rule). Every tensor of the result is either mapped (src -> dst), new, and every
source tensor not used is reported as dropped: nothing is silently ignored. report["extended"]
lists the partially-copied tensors: {dst: (rows copied, rows total)}.
"""
from __future__ import annotations

import dataclasses
import re

import torch

from gst_ros.models.transformer import GST, GSTConfig

KINDS = ("llamagen-gpt", "gst-gpt")
LLAMAGEN_HEAD_DIM = 64
GST_CAMERA_VOCAB = 2048
_WRAPPERS = ("model", "state_dict", "module")
_PREFIXES = ("_orig_mod.", "module.")
_QK_ALIASES = {"q_norm": ("q_norm", "q_layernorm"), "k_norm": ("k_norm", "k_layernorm")}


def _unwrap(foreign: dict) -> dict[str, torch.Tensor]:
    """Take the tensors out of a checkpoint dict: descend into "model"/"state_dict"/"module"
    when the top level is a wrapper, strip torch.compile / DDP prefixes."""
    d = foreign
    for _ in range(3):
        if any(isinstance(v, torch.Tensor) for v in d.values()):
            break
        inner = next((d[k] for k in _WRAPPERS if isinstance(d.get(k), dict)), None)
        if inner is None:
            break
        d = inner
    out = {}
    for k, v in d.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    if "tok_embeddings.weight" not in out:
        raise ValueError("not a LlamaGen/GST GPT state dict: no 'tok_embeddings.weight' "
                         f"(found {len(out)} tensors, e.g. {sorted(out)[:3]})")
    return out


def _infer_config(kind: str, src: dict[str, torch.Tensor], camera_vocab: int | None,
                  grid: tuple[int, int] | None) -> GSTConfig:
    rows, dim = src["tok_embeddings.weight"].shape
    layer_ids = sorted({int(m.group(1)) for k in src
                        if (m := re.fullmatch(r"layers\.(\d+)\.attention\.wqkv\.weight", k))})
    if not layer_ids or layer_ids != list(range(len(layer_ids))):
        raise ValueError(f"{kind}: layers.{{i}}.attention.wqkv.weight missing or not numbered 0..n-1 "
                         f"(found layer ids {layer_ids[:8]})")
    n_layer = len(layer_ids)
    wqkv = src["layers.0.attention.wqkv.weight"]
    if tuple(wqkv.shape) != (3 * dim, dim):
        raise ValueError(f"{kind}: wqkv has shape {tuple(wqkv.shape)}, expected {(3 * dim, dim)} "
                         "(grouped-query attention is not supported)")
    head_dim = LLAMAGEN_HEAD_DIM
    for alias in _QK_ALIASES["q_norm"]:
        w = src.get(f"layers.0.attention.{alias}.weight")
        if w is not None:
            head_dim = int(w.shape[0])
            break
    if dim % head_dim:
        raise ValueError(f"{kind}: dim {dim} is not a multiple of head_dim {head_dim}")
    if kind == "llamagen-gpt":
        image_vocab = int(rows)
        camera_vocab = GST_CAMERA_VOCAB if camera_vocab is None else camera_vocab
        if grid is None and "freqs_cis" in src:  # (cls_token_num + grid^2, head_dim/2, 2), c2i: 1 cls token
            g = int(round((src["freqs_cis"].shape[0] - 1) ** 0.5))
            grid = (g, g) if g * g == src["freqs_cis"].shape[0] - 1 else None
    else:
        camera_vocab = GST_CAMERA_VOCAB if camera_vocab is None else camera_vocab
        image_vocab = int(rows) - camera_vocab - 2
        if image_vocab < 1:
            raise ValueError(f"{kind}: vocabulary of {rows} rows cannot hold {camera_vocab} camera codes "
                             "+ 2 task tokens")
    cfg = GSTConfig(dim=int(dim), n_layer=n_layer, n_head=int(dim) // head_dim, image_vocab=image_vocab,
                    camera_vocab=camera_vocab, grid=grid or (16, 16))
    w1 = src.get("layers.0.feed_forward.w1.weight")
    if w1 is not None and w1.shape[0] != cfg.ffn_hidden:
        raise ValueError(f"{kind}: feed-forward hidden size {w1.shape[0]} does not follow the LlamaGen rule "
                         f"(expected {cfg.ffn_hidden} for dim {dim})")
    return cfg


def _new_tensor(name: str, shape, dtype, std: float, gen: torch.Generator) -> torch.Tensor:
    """Initial value of a tensor the source lacks, by the model's own init rules."""
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("norm.bias") or name == "output.weight":
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=gen) * std).to(dtype)


def _source_name(dst: str, src: dict) -> str | None:
    """Source key for our key `dst`: the same name, or a QK-Norm alias."""
    if dst in src:
        return dst
    m = re.fullmatch(r"(layers\.\d+\.attention)\.(q_norm|k_norm)\.(weight|bias)", dst)
    if m:
        for alias in _QK_ALIASES[m.group(2)]:
            name = f"{m.group(1)}.{alias}.{m.group(3)}"
            if name in src:
                return name
    return None


def convert_gpt_state_dict(kind: str, foreign: dict[str, torch.Tensor], *, camera_vocab: int | None = None,
                           grid: tuple[int, int] | None = None, seed: int = 0,
                           ) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Convert a LlamaGen ("llamagen-gpt") or official GST ("gst-gpt") GPT state dict.

    Returns (state_dict for GST, config as a plain dict of GSTConfig fields, report) with
    report = {"mapped": [(src, dst)], "new": [dst], "dropped": [src], "extended": {dst: (copied, rows)}}.
    camera_vocab / grid override what cannot be read from the tensors (defaults 2048 and 16x16,
    or the grid of a freqs_cis buffer); seed makes the new embedding rows reproducible."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; expected one of {KINDS}")
    if not isinstance(foreign, dict):
        raise ValueError(f"expected a dict of tensors, got {type(foreign).__name__}")
    src = _unwrap(foreign)
    cfg = _infer_config(kind, src, camera_vocab, grid)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GST(cfg).state_dict().items()}
    dtype = src["tok_embeddings.weight"].dtype
    gen = torch.Generator().manual_seed(seed)
    state, mapped, new, extended, used = {}, [], [], {}, set()
    for dst, shape in shapes.items():
        name = _source_name(dst, src)
        if name is None:
            state[dst] = _new_tensor(dst, shape, dtype, cfg.initializer_range, gen)
            new.append(dst)
            continue
        t = src[name]
        if tuple(t.shape) == shape:
            state[dst] = t.detach().clone()
        elif dst in ("tok_embeddings.weight", "output.weight") and kind == "llamagen-gpt" \
                and t.ndim == 2 and t.shape[1] == shape[1] and t.shape[0] <= shape[0]:
            full = _new_tensor(dst, shape, t.dtype, cfg.initializer_range, gen)
            full[: t.shape[0]] = t
            state[dst] = full
            extended[dst] = (int(t.shape[0]), int(shape[0]))
        else:
            raise ValueError(f"{kind}: {name!r} has shape {tuple(t.shape)}, expected {shape} for {dst!r}")
        mapped.append((name, dst))
        used.add(name)
    dropped = sorted(k for k in src if k not in used)
    report = {"mapped": mapped, "new": new, "dropped": dropped, "extended": extended}
    return state, dataclasses.asdict(cfg), report


def format_report(report: dict) -> str:
    """A short human-readable summary of a conversion report."""
    lines = [f"mapped {len(report['mapped'])} tensors, new {len(report['new'])}, "
             f"dropped {len(report['dropped'])}"]
    for dst, (copied, rows) in report.get("extended", {}).items():
        lines.append(f"  extended {dst}: rows 0..{copied - 1} copied, {rows - copied} new rows")
    lines += [f"  new: {k}" for k in report["new"]]
    lines += [f"  dropped: {k}" for k in report["dropped"]]
    return "\n".join(lines)

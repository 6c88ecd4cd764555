"""The on-disk model format: one directory per model.

    <dir>/config.json        {"kind": <kind>, "config": {...dataclass fields...}, ...extra}
    <dir>/model.safetensors  the state dict (no pickled code anywhere)

`kind` is one of KINDS. Every model class in gst_ros.models builds itself from its config
dataclass; this module only moves tensors and JSON, so it never needs to know the classes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

KINDS = ("image_tokenizer", "camera_tokenizer", "gst")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class ModelFormatError(ValueError):
    """A model directory is missing, truncated, or does not match what the caller expects."""


def _atomic_write_bytes(path: Path, write) -> None:
    """Write via a temporary file in the same directory, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model_dir(directory, kind: str, config, state_dict: dict, extra: dict | None = None) -> Path:
    """Save `state_dict` (tensors) and `config` (a dataclass or dict) as a model directory."""
    if kind not in KINDS:
        raise ModelFormatError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    directory = Path(directory)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    meta = {"kind": kind, "config": cfg, **(extra or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    _atomic_write_bytes(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p))
    _atomic_write_bytes(
        directory / CONFIG_FILE,
        lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"),
    )
    return directory


def load_model_dir(directory, kind: str | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Return (meta, state_dict) of a model directory; `meta["config"]` holds the config fields.

    Raises ModelFormatError naming the problem (missing file, bad JSON, wrong kind, truncated
    or unreadable safetensors)."""
    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise ModelFormatError(f"model directory {directory}: missing {p.name}")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise ModelFormatError(f"{cfg_path}: expected keys 'kind' and 'config'")
    if kind is not None and meta["kind"] != kind:
        raise ModelFormatError(f"{directory} holds a {meta['kind']!r} model, expected {kind!r}")
    try:
        state = load_file(str(w_path))
    except Exception as e:  # safetensors raises its own error types for truncated headers/data
        raise ModelFormatError(f"{w_path}: unreadable or truncated safetensors file ({e})") from e
    return meta, state


def load_tensor(directory, key: str) -> torch.Tensor:
    """One tensor `key` of a model directory's weights, read alone (safetensors reads only its
    bytes), for checks that need one piece of a model that is loaded elsewhere. ModelFormatError
    names a missing file, an unreadable file or a missing key."""
    w_path = Path(directory) / WEIGHTS_FILE
    if not w_path.is_file():
        raise ModelFormatError(f"model directory {directory}: missing {WEIGHTS_FILE}")
    try:
        with safe_open(str(w_path), framework="pt") as f:
            if key not in f.keys():
                raise ModelFormatError(f"{w_path}: no tensor {key!r}")
            return f.get_tensor(key)
    except ModelFormatError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated headers/data
        raise ModelFormatError(f"{w_path}: unreadable or truncated safetensors file ({e})") from e


def config_from_dict(cls, fields: dict):
    """Build config dataclass `cls` from a dict, rejecting unknown fields by name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - names)
    if unknown:
        raise ModelFormatError(f"{cls.__name__}: unknown config fields {unknown}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in fields:
            v = fields[f.name]
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "") -> None:
    """load_state_dict(strict=True) with an error that names the first missing, unexpected or
    mis-shaped key instead of PyTorch's wall of text."""
    own = model.state_dict()
    where = f" ({source})" if source else ""
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelFormatError(f"checkpoint{where} is missing {len(missing)} tensors, first: {missing[0]!r}")
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ModelFormatError(
            f"checkpoint{where} has {len(unexpected)} unexpected tensors, first: {unexpected[0]!r}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelFormatError(
                f"checkpoint{where}: shape mismatch for {k!r}: file {tuple(state[k].shape)} "
                f"vs model {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)

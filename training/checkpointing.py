"""Atomic training checkpoints with exact resume: modules, optimizers, step, RNG states.

    save_training_state(out / "checkpoint.pt", step, modules={"vq": model, "disc": disc},
                        optimizers={"vq": opt}, extra={"config": cfg_dict})
    step, extra = load_training_state(out / "checkpoint.pt", modules=..., optimizers=...)

The file is written to a temporary name and renamed, so a crash never leaves half a checkpoint.
It holds only tensors, numbers, strings and containers: it loads with
torch.load(weights_only=True). RNG states of python `random`, numpy and torch (CPU and CUDA) are
saved and restored, so a resumed run draws the same batches as an uninterrupted one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


class TrainingCheckpointError(RuntimeError):
    """A training checkpoint is unreadable or does not match the modules it should restore."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (global RNG on purpose)
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path, step: int, modules: dict, optimizers: dict | None = None,
                        extra: dict | None = None) -> Path:
    """Write {step, modules' state dicts, optimizers' state dicts, RNG states, extra} atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "step": int(step),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "rng": rng_state(),
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_training_state(path, modules: dict, optimizers: dict | None = None,
                        restore_rng: bool = True, check_extra=None) -> tuple[int, dict]:
    """Restore modules and optimizers (strict) and the RNG states; return (step, extra).
    check_extra: called with the stored extra before anything is restored (to refuse a
    checkpoint written under other settings with its own message)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingCheckpointError(f"no training checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingCheckpointError(f"{path}: unreadable or truncated checkpoint ({e})") from e
    for key in ("step", "modules", "optimizers", "rng"):
        if key not in payload:
            raise TrainingCheckpointError(f"{path}: not a training checkpoint (no {key!r})")
    if check_extra is not None:
        check_extra(payload.get("extra", {}))
    for name, module in modules.items():
        if name not in payload["modules"]:
            raise TrainingCheckpointError(f"{path}: has no module {name!r} "
                                          f"(has {sorted(payload['modules'])})")
        try:
            module.load_state_dict(payload["modules"][name], strict=True)
        except RuntimeError as e:
            raise TrainingCheckpointError(f"{path}: module {name!r} does not match: "
                                          f"{str(e).splitlines()[0]}") from e
    for name, opt in (optimizers or {}).items():
        if name not in payload["optimizers"]:
            raise TrainingCheckpointError(f"{path}: has no optimizer {name!r}")
        opt.load_state_dict(payload["optimizers"][name])
    if restore_rng:
        set_rng_state(payload["rng"])
    return int(payload["step"]), payload.get("extra", {})

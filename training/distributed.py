"""Scale-out helpers for the transformer trainer: torchrun + DDP, or FSDP for the XXL recipe.

    torchrun --nproc_per_node 8 -m training.train_gst --config training/configs/gst_xxl.yaml --out runs/xxl

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed`
reads them (a plain `python -m ...` run is a world of one and needs none of this). Backend: NCCL
on CUDA, gloo on CPU (what the tests use: two CPU processes).

Data split: every rank draws the same GLOBAL batch of sample indices (and the same per-sample
task and condition-dropout draws) from a generator seeded by (seed, step), then takes its own
contiguous slice (`rank_slice`). With every sample carrying the same number of loss tokens, the
mean of the ranks' mean losses equals the single-process mean over the global batch, and DDP's
gradient average equals the single-process gradient.

Strategies: "none" (single process), "ddp" (DistributedDataParallel: every rank holds the whole
model), "fsdp" (FSDP2 `fully_shard`, one unit per transformer block, parameters, gradients and
optimizer state sharded; bf16 mixed precision on CUDA; works on CPU with gloo too).
Checkpoints always hold the full, unsharded state (FullStateView), written by rank 0, so a run
can resume with another world size (the optimizer state of an FSDP checkpoint is keyed by
parameter name, that of a DDP / single-process one by index: switching between FSDP and the
others needs a fresh optimizer).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

STRATEGIES = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group torchrun (or a test's spawner) described in the environment.

    Returns DistInfo(rank 0, world 1) when WORLD_SIZE is unset or 1. backend: "nccl", "gloo" or
    None (NCCL when CUDA is available, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set: launch with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def device_for(info: DistInfo, requested: str = "auto") -> torch.device:
    """The device of this rank: cuda:<local_rank> when CUDA is used, else cpu."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available")
    return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())


def rank_slice(global_batch: int, info: DistInfo) -> slice:
    """This rank's contiguous slice of a global batch; the batch must divide evenly."""
    if global_batch % info.world_size:
        raise ValueError(f"global batch {global_batch} is not divisible by the world size {info.world_size}")
    per = global_batch // info.world_size
    return slice(info.rank * per, (info.rank + 1) * per)


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, device: torch.device,
               block_cls: type | None = None, bf16: bool = False) -> nn.Module:
    """Wrap `model` (already on `device`) for `strategy`. FSDP wraps each `block_cls` module as
    one shard unit (use_orig_params so parameter names, and hence weight-decay groups, survive)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none":
        if info.enabled:
            raise ValueError(f"strategy 'none' with a world of {info.world_size} processes: use ddp or fsdp")
        return model
    if not info.enabled:
        return model  # a world of one: nothing to wrap (keeps single-process runs of any recipe simple)
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    for m in model.modules():
        if block_cls is not None and isinstance(m, block_cls):
            fully_shard(m, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside a DDP / FSDP wrapper (FSDP with use_orig_params keeps names)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def no_sync(model: nn.Module, skip: bool):
    """Context skipping the gradient all-reduce / reduce-scatter (accumulation micro-steps) when `skip`."""
    if not skip:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):
        return model.no_sync()
    if is_fsdp(model):
        return _fsdp_no_sync(model)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (over all shards under FSDP); returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), max_norm)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def mean_over_ranks(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """All-reduce average of a scalar tensor (identity in a world of one)."""
    if not info.enabled:
        return value
    v = value.detach().clone().float()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / info.world_size


class FullStateView:
    """Adapter giving a wrapped model / its optimizer the state_dict()/load_state_dict() of the
    full unsharded model, so training.checkpointing saves and restores them unchanged under any
    strategy (under FSDP every rank must call these: they gather / scatter). kind: "model" or
    "optim"."""

    def __init__(self, model: nn.Module, kind: str, optimizer=None):
        if kind not in ("model", "optim"):
            raise ValueError(f"kind must be 'model' or 'optim', got {kind!r}")
        self.model, self.kind, self.optimizer = model, kind, optimizer

    def state_dict(self):
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            if self.kind == "model":
                return get_model_state_dict(self.model, options=opts)
            return get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return unwrap(self.model).state_dict() if self.kind == "model" else self.optimizer.state_dict()

    def load_state_dict(self, state, strict: bool = True):
        if is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, strict=strict)
            if self.kind == "model":
                return set_model_state_dict(self.model, state, options=opts)
            return set_optimizer_state_dict(self.model, self.optimizer, state, options=opts)
        if self.kind == "model":
            return unwrap(self.model).load_state_dict(state, strict=strict)
        return self.optimizer.load_state_dict(state)


def free_port() -> int:
    """A free TCP port on localhost for MASTER_PORT (tests and single-node runs)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

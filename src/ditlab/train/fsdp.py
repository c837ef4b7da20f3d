"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the training loop: sharding, sharded checkpoints, EMA.

``TrainConfig.parallel = "fsdp"`` shards every block of ``model.blocks`` (one all-gather / reduce-scatter unit
per block), then the root (embedders, final layer), over all ranks of the torchrun job.

EMA: the shadow copy is made from the unsharded model (as for DDP) and then sharded with the same plan, so each
rank holds and averages only its own shard (``torch._foreach_lerp_`` on matching DTensors): no extra
communication per step, 1/world of the EMA memory. The full EMA weights are gathered only to save or sample.

Mixed precision (``TrainConfig.fsdp_mixed_precision``): the trained model gets FSDP2's
``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: parameters are all-gathered and run in bf16,
gradients are reduce-scattered in fp32 into the fp32 shards, which stay the optimizer's master weights. The EMA
copy gets no policy (it is never run forward in training, and its shards and gathered weights stay fp32).

Checkpoints keep the single-process layout (see :mod:`ditlab.train.checkpoint`) except the train state:

- ``step_<S>.train_state.dcp/``: a ``torch.distributed.checkpoint`` folder with the sharded model, optimizer
  state and step; every rank writes its own shard, and it can be loaded on a different number of ranks;
- ``step_<S>.safetensors``: the full EMA weights with official keys and the usual metadata, written by rank 0.

Atomicity: the folder is written under a temporary name, renamed when every rank has finished, and the EMA file
is written last, so a step counts only when both exist. On several nodes ``run_dir`` must be a shared file system.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..utils.distributed import DistInfo, barrier, broadcast_object
from . import checkpoint as ckpt


def _fsdp_api() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(fully_shard, init_device_mesh)``, or a one-line error when this torch has no public FSDP2."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError as err:
        raise ValueError(f"parallel='fsdp' needs torch>=2.6 (public fully_shard); this is torch {torch.__version__}") \
            from err
    return fully_shard, init_device_mesh


def mixed_precision_policy() -> Any:
    """The bf16 ``MixedPrecisionPolicy`` of ``fsdp_mixed_precision``: bf16 compute and all-gather, fp32 reduce.

    ``cast_forward_inputs=False``: FSDP2 would otherwise cast every floating input to bf16 at each unit's
    forward, including flow's continuous timestep ``t`` before the fp32 timestep embedding (t = 0.537 would reach
    the model as 0.5352). The loop keeps autocast on, which casts matmul inputs to bf16 anyway and keeps
    softmax, norms and the loss in fp32, and lets fp32 modules outside FSDP (REPA's projector) take bf16 features.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)


def shard(model: nn.Module, ema_module: nn.Module, info: DistInfo, mixed_precision: bool = False) -> None:
    """Apply FSDP2 in place to the model and its EMA copy: each block of ``model.blocks``, then the root.

    Call after the EMA copy is made and before the optimizer is built (sharding replaces the parameters).
    ``mixed_precision`` gives the model (not the EMA copy) :func:`mixed_precision_policy`.
    """
    if info.world_size < 2:
        raise ValueError(f"parallel='fsdp' needs torchrun with 2 or more processes (world size {info.world_size}); "
                         "use parallel='ddp' on one process")
    fully_shard, init_device_mesh = _fsdp_api()
    mesh = init_device_mesh(info.device.type, (info.world_size,))
    for module, bf16 in ((model, mixed_precision), (ema_module, False)):
        kwargs = {"mesh": mesh, "mp_policy": mixed_precision_policy()} if bf16 else {"mesh": mesh}
        for block in module.blocks:
            fully_shard(block, **kwargs)
        fully_shard(module, **kwargs)


def _state_owner(model: nn.Module, objective: nn.Module | None) -> nn.Module:
    """One module holding everything the optimizer trains (the backbone and a trainable objective's parts)."""
    parts = {"model": model} if objective is None else {"model": model, "objective": objective}
    return nn.ModuleDict(parts)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded CPU state dict of a sharded module on rank 0 (empty elsewhere); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save(ckpt_dir: Path, step: int, model: nn.Module, ema_module: nn.Module, opt: torch.optim.Optimizer,
         metadata: dict[str, Any], info: DistInfo, objective: nn.Module | None = None, keep: int = 0) -> Path:
    """Write the checkpoint of ``step`` from every rank (a collective), keep the newest ``keep`` (0 = all).

    Returns the EMA weights file.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from .dcp_safe import first_failure

    ckpt_dir = Path(ckpt_dir)
    weights_path, _ = ckpt.checkpoint_paths(ckpt_dir, step)
    final = ckpt.sharded_state_path(ckpt_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    ema_state = full_state_dict(ema_module)  # before anything is written: a non-finite EMA is never saved
    _raise_everywhere(ValueError, _rank0_error(info, lambda: ckpt.refuse_non_finite(ema_state, step)))
    if info.is_main:  # leftovers of a crashed save of this step
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
    barrier()
    owner = _state_owner(model, objective)
    state = {"model": get_model_state_dict(owner), "optimizer": get_optimizer_state_dict(owner, opt),
             "step": torch.tensor(step)}
    try:
        dcp.save(state, checkpoint_id=str(tmp))
    except (OSError, RuntimeError, dcp.api.CheckpointException) as err:
        raise ckpt.CheckpointWriteError(ckpt.write_failure(tmp, first_failure(err))) from None
    barrier()  # every shard is on disk before the folder gets its real name

    def publish() -> None:
        try:
            os.replace(tmp, final)
            _fsync_dir(ckpt_dir)
        except OSError as err:
            raise ckpt.CheckpointWriteError(ckpt.write_failure(final, err)) from None
        digests = ckpt.train_state_digests(ckpt_dir, step)
        ckpt.save_weights(weights_path, ema_state, {**metadata, "step": step, ckpt.STATE_DIGEST_KEY: digests})
        ckpt.prune_checkpoints(ckpt_dir, keep)

    _raise_everywhere(ckpt.CheckpointWriteError, _rank0_error(info, publish))
    return weights_path


def _rank0_error(info: DistInfo, work: Callable[[], None]) -> str | None:
    """Run ``work`` on rank 0; its error message (or None) reaches every rank (a collective)."""
    error = None
    if info.is_main:
        try:
            work()
        except (ValueError, ckpt.CheckpointWriteError, OSError) as err:  # OSError: an unlink/rename not wrapped
            error = str(err)
    return broadcast_object(error)  # type: ignore[return-value]


def _raise_everywhere(kind: type[Exception], error: str | None) -> None:
    if error is not None:
        raise kind(error)


def restore(ckpt_dir: Path, step: int, model: nn.Module, ema_module: nn.Module, opt: torch.optim.Optimizer,
            objective: nn.Module | None = None) -> int:
    """Load checkpoint ``step`` into the sharded model, optimizer and EMA; returns the step.

    The folder is read with :mod:`ditlab.train.dcp_safe` (no pickled code runs).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from .dcp_safe import SafeFileSystemReader, SafeLoadPlanner, first_failure

    weights_path, _ = ckpt.checkpoint_paths(ckpt_dir, step)
    state_path = ckpt.sharded_state_path(ckpt_dir, step)
    if not state_path.is_dir():
        raise ValueError(f"cannot resume {weights_path} with parallel='fsdp': {state_path} is missing "
                         "(was the run trained with parallel='ddp'?)")
    owner = _state_owner(model, objective)
    # The optimizer state must exist to be loaded into; get_optimizer_state_dict creates it (a zero-lr step).
    state = {"model": get_model_state_dict(owner), "optimizer": get_optimizer_state_dict(owner, opt),
             "step": torch.tensor(-1)}
    try:
        dcp.load(state, storage_reader=SafeFileSystemReader(str(state_path)), planner=SafeLoadPlanner())
        set_model_state_dict(owner, state["model"])
        set_optimizer_state_dict(owner, opt, state["optimizer"])
        ema_state, _ = ckpt.load_weights(weights_path)
        set_model_state_dict(ema_module, ema_state, options=StateDictOptions(full_state_dict=True, strict=True))
    except (RuntimeError, KeyError, OSError, dcp.api.CheckpointException) as err:
        cause = first_failure(err)
        if isinstance(cause, ValueError):  # ours: already one line naming the file
            raise ValueError(str(cause)) from None
        raise ValueError(f"cannot resume from {state_path}: {str(cause).splitlines()[0]}") from None
    if int(state["step"]) != step:
        raise ValueError(f"cannot resume: {state_path} says step {int(state['step'])}, its name says {step}")
    return step


def unsharded_copy(module: nn.Module, build: Callable[[], nn.Module], info: DistInfo) -> nn.Module | None:
    """A plain (unsharded) copy of a sharded module on rank 0, e.g. the EMA for sample grids; None elsewhere.

    Every rank must call it (the weights are gathered); ``build`` makes a fresh module of the same architecture.
    """
    state = full_state_dict(module)
    if not info.is_main:
        return None
    copy = build()
    copy.load_state_dict(state, strict=True)
    return copy.to(info.device).eval().requires_grad_(False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_fsdp_ready() -> bool:
    """Whether this torch has FSDP2 and torch.distributed (for skipping tests)."""
    try:
        _fsdp_api()
    except ValueError:
        return False
    return dist.is_available()

"""One training loop for every backbone and objective: single process or torchrun DDP.

The loop owns the run folder, the optimizer, EMA, checkpoints, logging and the data order; the objective owns
the loss (``objective.loss(model, x0, y) -> dict of per-sample tensors``) and the backbone owns the network.

Exactness: the batch of step ``s`` comes from :class:`StepBatchSampler` and every random draw of step ``s``
(timesteps, noise, label dropout) follows ``torch.manual_seed(step_seed(seed, rank, s))`` (and numpy's global
seed, for MDT's numpy timestep draw), so a resumed run repeats an uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ..data import StepBatchSampler
from ..models.layers import set_attention_backend
from ..models.registry import create_model, family_of
from ..optim import Adan
from ..utils.distributed import DistInfo, barrier, broadcast_object, init_distributed
from . import checkpoint as ckpt
from . import fid, fsdp
from .config import TrainConfig
from .curves import plot_curves
from .data_source import DataSource, build_data_source
from .ema import EMA
from .logger import MetricsLogger
from .objective import build_objective, required_out_channels, sampling_config, trainable_parameters
from .run_folder import claim_run_dir
from .signals import agreed_stop, stop_requests
from .step import NonFiniteLoss, StepParts, StepStats, inputs_checked_once, optimisation_step, read_window


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the broken weights."""


@dataclass
class TrainResult:
    """What a finished run leaves behind."""

    run_dir: Path
    step: int
    last_checkpoint: Path | None
    final_loss: float
    metrics: list[dict[str, Any]] = field(default_factory=list)
    is_main: bool = True  # False on the other ranks of a distributed run
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT" when a signal ended the run early (save_on_signal)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of one step on one rank (distinct for every (seed, rank, step) in practice).

    Taken modulo 2**64 (what ``torch.manual_seed`` accepts), which changes nothing for seeds below 4e9.
    """
    return ((seed * 1_000_003 + step) * 4_099 + rank) % 2**64


# ----------------------------------------------------------------------------
# Set-up pieces.


def build_model(config: TrainConfig, data: DataSource) -> nn.Module:
    """The backbone, with data-dependent sizes (channels, input size, classes) filled in from the data."""
    args = {"in_channels": data.channels, "input_size": data.input_size, "num_classes": data.num_classes}
    args.update(config.model_args)
    for key, have in (("in_channels", data.channels), ("input_size", data.input_size)):
        if args[key] != have:
            raise ValueError(f"model {key}={args[key]} does not match the data ({config.data}): {key}={have}")
    if args["num_classes"] < data.num_classes:
        raise ValueError(f"model num_classes={args['num_classes']} < {data.num_classes} classes in {config.data}")
    model = create_model(config.model, **args)
    expected = required_out_channels(config, data.channels)
    if getattr(model, "out_channels", expected) != expected:
        raise ValueError(
            f"model predicts {model.out_channels} channels but the {config.objective} objective needs {expected} "
            f"(learn_sigma={config.diffusion.learn_sigma}); set learn_sigma to match"
        )
    return model


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused kernel on CUDA) or Adan over the trainable parameters; models may supply their own groups.

    Adan's own global-norm clipping stays off: ``max_grad_norm`` is applied by the loop for every optimizer.
    """
    if config.optimizer not in ("adamw", "adan"):
        raise ValueError(f"optimizer={config.optimizer!r} is not one of adamw, adan")
    if hasattr(model, "optimizer_param_groups"):
        groups = model.optimizer_param_groups(config.weight_decay)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if config.optimizer == "adan":
        return Adan(groups, lr=config.lr, betas=tuple(config.adan_betas), weight_decay=config.weight_decay)
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
        fused=device.type == "cuda",
    )


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant."""
    if config.warmup_steps > 0:
        return config.lr * min(1.0, (step + 1) / config.warmup_steps)
    return config.lr


def restore(run_dir: Path, step: int, model: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
            device: torch.device, objective: nn.Module | None = None) -> int:
    """Load checkpoint ``step`` into model, EMA, optimizer (and a trainable objective); returns the step."""
    weights_path, state_path = ckpt.checkpoint_paths(run_dir / "checkpoints", step)
    try:
        state = ckpt.load_train_state(state_path, device)
        ema_state, _ = ckpt.load_weights(weights_path)
        model.load_state_dict(state["model"], strict=True)
        if objective is not None:
            objective.load_state_dict(state["objective"], strict=True)
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(ema_state)
    except (RuntimeError, KeyError, OSError) as err:
        raise ValueError(f"cannot resume from {weights_path}: {str(err).splitlines()[0]}") from err
    if state["step"] != step:
        raise ValueError(f"cannot resume: {state_path} says step {state['step']}, its name says {step}")
    return step


def checkpoint_metadata(model: nn.Module, config: TrainConfig, vae: str) -> dict[str, Any]:
    """What ``ditlab sample`` needs to rebuild the model (and decode its samples) from the weights file alone."""
    return {
        "vae": vae,
        "family": family_of(model),
        "model": config.model,
        "config": dataclasses.asdict(model.config),
        "diffusion": config.to_dict()["diffusion"],
        "objective": config.objective,
        "flow": config.to_dict()["flow"],
    }


def save(run_dir: Path, step: int, model: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
         config: TrainConfig, vae: str, objective: nn.Module | None = None) -> Path:
    metadata = checkpoint_metadata(model, config, vae)
    train_state = {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict()}
    if objective is not None:  # trainable objective parts (REPA's projector)
        train_state["objective"] = objective.state_dict()
    path = ckpt.save_checkpoint(run_dir / "checkpoints", step, ema.state_dict(), metadata, train_state)
    ckpt.prune_checkpoints(run_dir / "checkpoints", config.keep_checkpoints)
    return path


# ----------------------------------------------------------------------------
# The loop.


def train(config: TrainConfig, resume: bool = False, resume_step: int | None = None) -> TrainResult:
    """Run (or resume) a training run to ``config.steps``; see the module docstring.

    ``resume_step`` picks the checkpoint to resume from; by default the newest intact one (a broken newer one is
    named in a warning and skipped). The run folder is locked while the run lasts.
    """
    info = init_distributed(config.device, config.dist_timeout)
    with claim_run_dir(config, resume, resume_step, info) as (run_dir, start):
        return _train(config, info, run_dir, start if resume else None)


def _train(config: TrainConfig, info: DistInfo, run_dir: Path, resume_from: int | None) -> TrainResult:
    resume = resume_from is not None
    data = build_data_source(config, info)
    torch.manual_seed(config.seed)  # the same initial weights on every rank and in every run of this config
    model = set_attention_backend(build_model(config, data).to(info.device), config.attention)
    objective = build_objective(config, model=model, data=data)
    wants_images = getattr(objective, "needs_images", False)  # REPA: the real images of each batch
    objective_params = trainable_parameters(objective)  # e.g. REPA's projector, trained with the backbone
    trained_objective = objective.to(info.device) if objective_params else None
    ema = EMA(model, config.ema_decay, warmup=config.ema_warmup)
    sharded = config.parallel == "fsdp"
    if sharded:  # model and EMA copy sharded alike; must precede the optimizer (it swaps the parameters)
        fsdp.shard(model, ema.module, info, mixed_precision=config.fsdp_mixed_precision)
    opt = build_optimizer(model, config, info.device)
    if objective_params:
        opt.add_param_group({"params": objective_params})
    if resume and sharded:
        start = fsdp.restore(run_dir / "checkpoints", resume_from, model, ema.module, opt, trained_objective)
    else:
        start = restore(run_dir, resume_from, model, ema, opt, info.device, trained_objective) if resume else 0
    model.grad_checkpointing = config.grad_checkpointing
    if config.compile:
        for block in model.blocks:
            block.compile()
    net = DistributedDataParallel(model, device_ids=[info.local_rank] if info.device.type == "cuda" else None) \
        if info.world_size > 1 and not sharded else model
    sampler = StepBatchSampler(data.size, config.global_batch, config.seed, info.rank, info.world_size, start)
    logger = MetricsLogger(run_dir, enabled=info.is_main, start_step=start)
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    last_ckpt = ckpt.checkpoint_paths(run_dir / "checkpoints", start)[0] if resume else None
    fid_state = fid.prepare(config, model, data.image_size, info, fit=data.image_fit(config.image_fit)) \
        if config.fid_every else None
    bar = tqdm(total=config.steps, initial=start, disable=not (info.is_main and config.progress),
               desc="train", unit="step", dynamic_ncols=True)
    window: list[StepStats] = []
    tic, loss_value = time.perf_counter(), math.nan
    parts = StepParts(net, model, objective, opt, ema, autocast, config.max_grad_norm, objective_params,
                      info.world_size)
    if fid_state is not None and resume and _fid_missing(run_dir, start, config, info):
        _log_fid(fid_state, run_dir, start, ema, config, data, info, logger, sharded)
    model.train()
    done = start
    with inputs_checked_once(model), stop_requests(config.save_on_signal) as stop:
        for step, indices in zip(range(start, config.steps), sampler, strict=False):
            # Data and randomness of this step are functions of (seed, rank, step) alone.
            x0, y = data.batch(indices, step=step)
            extra = {"images": data.images(indices, step)} if wants_images else {}
            torch.manual_seed(step_seed(config.seed, info.rank, step))
            np.random.seed(step_seed(config.seed, info.rank, step) % 2**32)  # MDT draws t with numpy
            window.append(optimisation_step(parts, x0, y, step, learning_rate(config, step), **extra))
            done = step + 1
            bar.update(1)
            stopping = config.save_on_signal and agreed_stop(stop, info.device)
            saving = done % config.ckpt_every == 0 or done == config.steps or stopping
            if done % config.log_every == 0 or saving:  # read (and NaN-check) the numbers before any save
                rows = _read_or_stop(window, last_ckpt, bar, logger)
                loss_value = rows[-1]["loss"]
            if done % config.log_every == 0 or done == config.steps or stopping:
                elapsed = time.perf_counter() - tic
                row = _summarise(rows, done, elapsed, config, opt)
                logger.log(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")
                window, tic = [], time.perf_counter()
            if saving:
                last_ckpt = _save_or_stop(run_dir, done, model, ema, opt, config, data.codec_name,
                                          trained_objective, info, last_ckpt, bar, logger)
            if stopping:
                break
            if _wants_grid(config, done):
                grid_model = fsdp.unsharded_copy(ema.module, lambda: build_model(config, data), info) \
                    if sharded else ema.module
                if info.is_main:
                    _save_grid(run_dir, done, grid_model, config, data)
            if fid_state is not None and (done % config.fid_every == 0 or done == config.steps):
                _log_fid(fid_state, run_dir, done, ema, config, data, info, logger, sharded)
    bar.close()
    logger.close()
    barrier()
    return TrainResult(run_dir, done, last_ckpt, loss_value, logger.rows, info.is_main, stop.name or None)


def _save_or_stop(run_dir: Path, done: int, model: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
                  config: TrainConfig, vae: str, objective: nn.Module | None, info: DistInfo,
                  last_ckpt: Path | None,
                  bar: tqdm, logger: MetricsLogger) -> Path:
    """Save the checkpoint of step ``done`` (every rank takes part); a failed or refused save stops the run
    on every rank with one line naming the file and the last good checkpoint."""
    where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    try:
        if config.parallel == "fsdp":  # every rank writes its shards
            metadata = checkpoint_metadata(model, config, vae)
            path = fsdp.save(run_dir / "checkpoints", done, model, ema.module, opt, metadata, info, objective,
                             keep=config.keep_checkpoints)
        else:
            path, error = None, None
            if info.is_main:
                try:
                    path = save(run_dir, done, model, ema, opt, config, vae, objective)
                except (ValueError, ckpt.CheckpointWriteError) as err:
                    error = (type(err).__name__, str(err))
                except OSError as err:  # one not wrapped as CheckpointWriteError: the other ranks must hear it too
                    error = ("CheckpointWriteError", f"checkpoint of step {done} failed ({err})")
            error = broadcast_object(error)
            if error is not None:
                raise (ckpt.CheckpointWriteError if error[0] == "CheckpointWriteError" else ValueError)(error[1])
    except ckpt.CheckpointWriteError as err:
        bar.close()
        logger.close()
        raise ckpt.CheckpointWriteError(f"{err}; {where}") from None
    except ValueError as err:  # a non-finite EMA
        bar.close()
        logger.close()
        raise NonFiniteLossError(f"{err}; stopped, {where}") from None
    return path


def _fid_missing(run_dir: Path, step: int, config: TrainConfig, info: DistInfo) -> bool:
    """Whether the resumed-from ``step`` is an FID step without its row: the run was killed between the
    checkpoint and the FID, or stopped by a signal there (the loop saves, then stops before the FID)."""
    due = step > 0 and (step % config.fid_every == 0 or step == config.steps)
    missing = info.is_main and due and not any("fid" in r and r["step"] == step for r in read_metrics(run_dir))
    return bool(broadcast_object(missing))


def _log_fid(state: fid.FIDState, run_dir: Path, done: int, ema: EMA, config: TrainConfig, data: DataSource,
             info: DistInfo, logger: MetricsLogger, sharded: bool) -> None:
    """FID of the EMA model (sampled over all ranks; one rank when sharded), logged and plotted on rank 0."""
    if sharded:  # the unsharded copy lives on rank 0 only, which then samples every image
        model = fsdp.unsharded_copy(ema.module, lambda: build_model(config, data), info)
    else:
        model = ema.module
    row = fid.evaluate(state, model, config, data.codec, data.num_classes, done, info, split=not sharded)
    if row is not None:
        logger.log(row)
        plot_curves(read_metrics(run_dir), run_dir / "curves.png", state.flops_per_step)
    barrier()


def _read_or_stop(window: list[StepStats], last_ckpt: Path | None, bar: tqdm, logger: MetricsLogger,
                  ) -> list[dict[str, float]]:
    """The window's numbers as floats; at a non-finite loss, close the bar and log, then stop the run."""
    try:
        return read_window(window)
    except NonFiniteLoss as bad:
        bar.close()
        logger.close()
        where = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
        raise NonFiniteLossError(f"{bad}; stopped, {where}") from None


def _summarise(window: list[dict[str, float]], step: int, elapsed: float, config: TrainConfig,
               opt: torch.optim.Optimizer) -> dict[str, Any]:
    row: dict[str, Any] = {"step": step}
    for key in window[0]:
        row[key] = sum(w[key] for w in window) / len(window)
    row["lr"] = opt.param_groups[0]["lr"]
    row["sec_per_step"] = elapsed / len(window)
    row["img_per_s"] = config.global_batch * len(window) / max(elapsed, 1e-9)
    if torch.cuda.is_available():
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def _wants_grid(config: TrainConfig, done: int) -> bool:
    if config.sample_every < 0:
        return False
    return done == config.steps or (config.sample_every > 0 and done % config.sample_every == 0)


def _save_grid(run_dir: Path, step: int, model: nn.Module, config: TrainConfig, data: DataSource) -> None:
    """A class-per-row grid from the EMA weights, saved as samples/step_<S>.png."""
    from ..imageio import save_grid
    from ..sampling import Guidance, generate, parse_sampler

    classes = min(data.num_classes, 10)
    labels = torch.arange(classes).repeat_interleave(8)
    objective = sampling_config(config)
    images = generate(model, objective, labels, parse_sampler(config.sample_steps, objective),
                      guidance=Guidance(config.sample_cfg), seed=config.seed, codec=data.codec)
    save_grid(images, run_dir / "samples" / f"step_{step:07d}.png", nrow=8, scale=max(1, 64 // images.shape[-1]))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


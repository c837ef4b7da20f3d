"""``ditlab demo``: train a small class-conditional DiT, sample, and grade the samples.

On the embedded digits (default) the whole job runs on a laptop CPU in a few minutes: training (with a progress
bar), a 10x10 grid (one row per class, classifier-free guidance) and the fraction of samples that a classifier
trained on real digits assigns to the class they were conditioned on (chance is 0.10).

With ``--data fashion-mnist`` (or ``mnist:DIR``) the same small DiT trains on the real 28x28 images padded to
32x32, and the samples are graded by FID with the real FID Inception network against reference statistics of
the training split (computed once, then cached); the FID of as many real test images against the same
reference is printed beside it, as the floor that this sample count allows.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data.idx import parse_idx_spec
from .eval.digits_classifier import fit_digits_classifier
from .imageio import save_grid
from .models.registry import create_model, model_config
from .objectives import DiffusionConfig
from .sampling import Guidance, generate, parse_sampler
from .train import TrainConfig, train
from .train.checkpoint import load_weights
from .train.objective import sampling_config

# Per family: (model_args, image_size, objective) that train in minutes on two CPU cores and reach the 0.80 target.
DEMO_DEFAULTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "DiT": ({"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 4}, 16, "diffusion"),  # 16 tokens
    "MDT": ({"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 4, "decode_layer": 2}, 16, "mdt"),
    "MDTv2": ({"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 4, "decode_layer": 2}, 16, "mdt"),
    "DDT": ({"hidden_size": 128, "num_groups": 4, "num_blocks": 4, "num_encoder_blocks": 3, "patch_size": 4}, 16,
            "flow"),
    "DiffuSSM": ({"depth": 4, "hidden_size": 128}, 8, "diffusion"),  # no patchify: 64 tokens at 8x8
}
# Settings that differ between the digits demo and the real-data (IDX) demo when left unset (None).
DATA_DEFAULTS = {
    "digits": {"steps": 3000, "sampler_steps": "ddim50", "cfg_scale": 5.0, "samples_per_class": 50},
    # (fashion-)mnist at 32x32 (64 tokens with patch 4); sized so that training, sampling and the Inception
    # features fit the 15-minute budget on two CPU cores (see README "Real images").
    "idx": {"steps": 1500, "sampler_steps": "ddim25", "cfg_scale": 3.0, "samples_per_class": 100, "image_size": 32},
}


@dataclass
class DemoConfig:
    """The demo's settings; the defaults fit in about five minutes on two CPU cores."""

    run_dir: str | None = None  # replaced if it holds an earlier demo run; None = runs/demo (digits), runs/demo-KIND
    data: str = "digits"  # "digits" (embedded; graded by a classifier) or fashion-mnist[:DIR] / mnist:DIR (FID)
    model: str = "DiT"  # preset or family (DiT, MDT, MDTv2, DDT, DiffuSSM); the size comes from model_args
    model_args: dict[str, Any] | None = None  # official-name model overrides; None = the family's demo size
    objective: str | None = None  # "diffusion", "mdt" (MDT's masked pass) or "flow"; None = the family's
    image_size: int | None = None  # digits: 8x8 upsampled to this (None = the family's 16; 8); IDX data: 32
    image_fit: str = "pad"  # IDX data: 28x28 to image_size by "pad" (zero border) or "resize" (bilinear)
    steps: int | None = None  # training steps; None = the data's default (DATA_DEFAULTS: 3000 digits, 1500 IDX)
    global_batch: int = 64  # images per step
    lr: float = 1e-3  # AdamW learning rate (higher than DiT's 1e-4: tiny model, short run)
    warmup_steps: int = 100  # linear learning-rate warm-up
    ema_decay: float = 0.999  # EMA decay, with warm-up
    sampler_steps: str | None = None  # "ddimN" (DDIM; flow: Euler) or "N" (DDPM); None = ddim50 digits, ddim25 IDX
    cfg_scale: float | None = None  # classifier-free guidance scale; None = 5.0 digits, 3.0 IDX
    clip_denoised: bool = False  # clamp each predicted x0 to [-1, 1] (ADM's pixel-space sampling)
    samples_per_class: int | None = None  # samples graded per class (grid: first 10); None = 50 digits, 100 IDX
    fid_reference: str | None = None  # IDX data: FID reference spec; None = the first 2000 of the data's train split
    seed: int = 0
    progress: bool = True  # progress bars


    def __post_init__(self) -> None:
        """Fill the unset model size, image size, objective and sampling settings from the family's and the
        data's demo defaults."""
        if self.data != "digits" and parse_idx_spec(self.data) is None:
            raise ValueError(f"demo data {self.data!r} is not allowed; use digits, fashion-mnist, fashion-mnist:DIR "
                             "or mnist:DIR (each with an optional :train, :test and :N)")
        for key, value in DATA_DEFAULTS["digits" if self.data == "digits" else "idx"].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.run_dir is None:
            self.run_dir = "runs/demo" if self.data == "digits" else f"runs/demo-{parse_idx_spec(self.data).kind}"
        family = model_config(self.model)[0].name if self.model not in DEMO_DEFAULTS else self.model
        model_args, image_size, objective = DEMO_DEFAULTS.get(family, DEMO_DEFAULTS["DiT"])
        if self.model != family:  # a preset: its own size, made small only where the user did not say
            model_args = {}
        self.model_args = dict(model_args) if self.model_args is None else self.model_args
        self.image_size = image_size if self.image_size is None else self.image_size
        self.objective = objective if self.objective is None else self.objective


def demo_train_config(cfg: DemoConfig) -> TrainConfig:
    return TrainConfig(
        run_dir=cfg.run_dir, model=cfg.model, model_args=dict(cfg.model_args), data=cfg.data, objective=cfg.objective,
        image_size=cfg.image_size, image_fit=cfg.image_fit, diffusion=DiffusionConfig(), steps=cfg.steps,
        global_batch=cfg.global_batch, lr=cfg.lr, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay,
        ema_warmup=True, seed=cfg.seed,
        device="cpu", log_every=50, ckpt_every=cfg.steps, keep_checkpoints=1, sample_every=-1,
        progress=cfg.progress,
    )


def _clear_previous_demo(run_dir: Path) -> None:
    """Remove an earlier demo run (and only that: a folder without our marker is left alone)."""
    if not run_dir.exists():
        return
    if not (run_dir / "demo.json").is_file():
        raise ValueError(f"{run_dir} exists and is not a ditlab demo folder; pass another --run-dir")
    shutil.rmtree(run_dir)


def load_ema_model(weights_path: Path) -> torch.nn.Module:
    """Rebuild the model from a checkpoint's metadata and load its EMA weights."""
    state, meta = load_weights(weights_path)
    model = create_model(meta["family"], **meta["config"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def sample_and_grade(model: torch.nn.Module, cfg: DemoConfig, run_dir: Path) -> dict[str, Any]:
    """Sample ``samples_per_class`` images per class, save the 10x10 grid, and grade every sample."""
    labels = torch.arange(10).repeat_interleave(cfg.samples_per_class)
    process = sampling_config(demo_train_config(cfg))  # the diffusion or flow settings the model trained under
    sampler = parse_sampler(cfg.sampler_steps, process, clip_denoised=cfg.clip_denoised)
    images = generate(model, process, labels, sampler, guidance=Guidance(cfg.cfg_scale), seed=cfg.seed,
                      progress=cfg.progress)
    per_class = images.reshape(10, cfg.samples_per_class, *images.shape[1:])
    grid_path = save_grid(per_class[:, :10].reshape(-1, *images.shape[1:]), run_dir / "samples.png", nrow=10,
                          scale=4)
    classifier = fit_digits_classifier(cfg.image_size, seed=cfg.seed)
    predicted = classifier.predict(images)
    accuracy = float((torch.as_tensor(predicted) == labels).float().mean())
    per_class_acc = [float((torch.as_tensor(predicted[labels == c]) == c).float().mean()) for c in range(10)]
    return {
        "class_accuracy": accuracy,
        "class_accuracy_per_class": per_class_acc,
        "classifier_held_out_accuracy": classifier.held_out_accuracy,
        "num_samples": len(labels),
        "grid": str(grid_path),
    }


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train, sample, grade; write ``demo.json`` with the results and return them."""
    run_dir = Path(cfg.run_dir)
    if cfg.data != "digits":  # FID's inputs are checked now, not after minutes of training
        from .demo_fid import check_inputs

        check_inputs(cfg)
    _clear_previous_demo(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "demo.json").write_text(json.dumps({"status": "running", "config": dataclasses.asdict(cfg)}))
    tic = time.perf_counter()
    result = train(demo_train_config(cfg))
    train_seconds = time.perf_counter() - tic
    model = load_ema_model(result.last_checkpoint)
    if cfg.data == "digits":
        report = sample_and_grade(model, cfg, run_dir)
    else:
        from .demo_fid import sample_and_score

        report = sample_and_score(model, cfg, run_dir, sampling_config(demo_train_config(cfg)))
    report.update(
        status="done", config=dataclasses.asdict(cfg), final_loss=result.final_loss,
        train_seconds=train_seconds, total_seconds=time.perf_counter() - tic,
        checkpoint=str(result.last_checkpoint), metrics=str(run_dir / "metrics.jsonl"),
        tensorboard=str(run_dir / "tb"),
    )
    (run_dir / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    if "fid" in report:
        from .demo_fid import format_fid_report

        return format_fid_report(report)
    acc = report["class_accuracy"]
    verdict = "meets" if acc >= 0.80 else "is below"
    return "\n".join([
        f"class accuracy of samples: {acc:.3f} over {report['num_samples']} samples "
        f"(chance 0.10; {verdict} the 0.80 target)",
        f"  per class: {' '.join(f'{a:.2f}' for a in report['class_accuracy_per_class'])}",
        f"  classifier's accuracy on held-out real digits: {report['classifier_held_out_accuracy']:.3f}",
        f"time: {report['train_seconds']:.0f} s training, {report['total_seconds']:.0f} s in all",
        f"sample grid (row = class 0..9): {report['grid']}",
        f"EMA checkpoint:                 {report['checkpoint']}",
        f"metrics:                        {report['metrics']}  (TensorBoard: {report['tensorboard']})",
        f"report:                         {Path(report['grid']).parent / 'demo.json'}",
    ])

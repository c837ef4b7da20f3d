"""The ``ditlab`` command: ``demo``, ``train``, ``flops``.

Every failure caused by user input ends in one line, ``ditlab: error: ...``, naming the bad value and what
is allowed; a traceback means a bug in ditlab.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from .cli_args import add_dataclass_flags, dataclass_overrides

EPILOG_TRAIN = """examples:
  ditlab train --model DiT-S/2 --data digits --steps 2000 --run-dir runs/s2
  ditlab train --resume runs/s2 --steps 4000        # continue the same run to step 4000
  torchrun --standalone --nproc_per_node=8 -m ditlab train --model DiT-XL/2 ...   # DDP, one process per GPU
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_report, run_demo

    cfg = DemoConfig(**dataclass_overrides(args, DemoConfig))
    print(f"ditlab demo: training a class-conditional DiT on the embedded digits -> {cfg.run_dir}", flush=True)
    report = run_demo(cfg)
    print(format_report(report))
    return 0


def _train_config(args: argparse.Namespace):
    from .objectives import DiffusionConfig
    from .train import TrainConfig

    diffusion_overrides = dataclass_overrides(args, DiffusionConfig)
    overrides = dataclass_overrides(args, TrainConfig)
    if args.resume:
        from pathlib import Path

        base = TrainConfig.load(Path(args.resume) / "config.json")
        changed = {k: v for k, v in overrides.items() if k not in ("steps", "progress", "log_every",
                                                                   "ckpt_every", "sample_every", "keep_checkpoints")}
        if changed or diffusion_overrides:
            names = ", ".join(sorted(set(changed) | set(diffusion_overrides)))
            raise ValueError(
                f"--resume keeps the run's config; only --steps and logging flags may change (got {names})"
            )
        return dataclasses.replace(base, run_dir=args.resume, **overrides)
    diffusion = dataclasses.replace(DiffusionConfig(), **diffusion_overrides)
    return TrainConfig(**overrides, diffusion=diffusion)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train
    from .train.distributed import shutdown

    config = _train_config(args)
    try:
        result = train(config, resume=bool(args.resume))
    finally:
        shutdown()  # an undestroyed gloo/nccl group can abort the process at interpreter exit
    if result.is_main:
        print(f"trained to step {result.step}; final loss {result.final_loss:.4f}; "
              f"last checkpoint {result.last_checkpoint}; run folder {result.run_dir}")
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    from .flops import run_flops_command

    print(run_flops_command(args.models or None, args.image_sizes, args.block))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .objectives import DiffusionConfig
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="ditlab", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="train a small DiT on the embedded digits, sample a grid, grade it",
                          description=__import__("ditlab.demo", fromlist=["x"]).__doc__)
    add_dataclass_flags(demo, DemoConfig)
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser("train", help="train a backbone (single process or torchrun DDP)", epilog=EPILOG_TRAIN,
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train any registered backbone under the Gaussian diffusion objective.")
    tr.add_argument("--resume", metavar="RUN_DIR", default=None,
                    help="continue the run in RUN_DIR from its newest checkpoint, with its saved config")
    add_dataclass_flags(tr, TrainConfig)
    add_dataclass_flags(tr.add_argument_group("diffusion objective"), DiffusionConfig)
    tr.set_defaults(func=_cmd_train)

    fl = sub.add_parser("flops", help="parameters and Gflops (multiply-adds) per preset",
                        description="Parameters and forward Gflops per image (multiply-accumulates, the papers' "
                                    "convention) of every preset, at each image size (latent = image / 8).")
    fl.add_argument("models", nargs="*", help="preset names (default: all)")
    fl.add_argument("--image-sizes", type=int, nargs="+", default=[256, 512], metavar="PX")
    fl.add_argument("--block", default=None, help="DiT conditioning block (adaLN-Zero, adaLN, cross-attention, "
                                                  "in-context)")
    fl.set_defaults(func=_cmd_flops)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train import NonFiniteLossError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NonFiniteLossError) as err:
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, NonFiniteLossError) else 1
    except KeyboardInterrupt:
        print("ditlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

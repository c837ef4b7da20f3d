"""The ``ditlab`` command: ``demo``, ``train``, ``extract-latents``, ``sample``, ``evaluate``, ``flops``,
``convert``, ``study``.

Every failure caused by user input ends in one line, ``ditlab: error: ...``, naming the bad value and what
is allowed; a traceback means a bug in ditlab.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

from .cli_args import add_dataclass_flags, dataclass_overrides

EPILOG_TRAIN = """examples:
  ditlab train --model DiT-S/2 --data digits --steps 2000 --run-dir runs/s2
  ditlab train --resume runs/s2 --steps 4000        # continue the same run to step 4000
  ditlab train --model DiT-S/4 --data fashion-mnist --steps 20000   # 28x28 padded to 32 (--image-fit resize)
  ditlab train --model DiT-S/4 --data mnist:/data/mnist:train:10000 ...  # a folder of the 4 IDX files, 10k images
  ditlab train --model MDTv2-S/2 --objective mdt --optimizer adan --max-grad-norm 1 --min-snr-gamma 5 --lr 5e-4 ...
                                                    # MDTv2's recipe (official train_util.py: Adan, max_grad_norm=1)
  ditlab train --model DDT --objective flow --model-args '{"num_blocks": 6, "num_encoder_blocks": 4}' ...
  ditlab train --data fashion-mnist --fid-every 1000 --fid-samples 2000 ...   # FID curve in metrics.jsonl, curves.png
  torchrun --standalone --nproc_per_node=8 -m ditlab train --model DiT-XL/2 ...   # DDP, one process per GPU
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, format_report, run_demo

    cfg = DemoConfig(**dataclass_overrides(args, DemoConfig))
    data = "the embedded digits" if cfg.data == "digits" else cfg.data
    print(f"ditlab demo: training a class-conditional {cfg.model} on {data} -> {cfg.run_dir}", flush=True)
    report = run_demo(cfg)
    print(format_report(report))
    return 0


# Nested config sections of TrainConfig and the flag prefix of each on the command line.
def _train_sections():
    from .objectives import DiffusionConfig
    from .objectives.flow import FlowConfig
    from .objectives.repa import REPAConfig

    return {"diffusion": (DiffusionConfig, ""), "flow": (FlowConfig, "flow_"), "repa": (REPAConfig, "repa_")}


_RESUMABLE_FLAGS = ("steps", "progress", "log_every", "ckpt_every", "sample_every", "keep_checkpoints",
                    "save_on_signal", "dist_timeout", "fid_every", "fid_samples", "fid_reference", "fid_inception")


def _train_config(args: argparse.Namespace):
    from .train import TrainConfig

    overrides = dataclass_overrides(args, TrainConfig)
    sections = {name: dataclass_overrides(args, cls, prefix) for name, (cls, prefix) in _train_sections().items()}
    if args.resume:
        from pathlib import Path

        base = TrainConfig.load(Path(args.resume) / "config.json")
        changed = set(overrides) - set(_RESUMABLE_FLAGS)
        changed |= {f"{name}.{key}" for name, values in sections.items() for key in values}
        if changed:
            raise ValueError(
                f"--resume keeps the run's config; only --steps and logging flags may change "
                f"(got {', '.join(sorted(changed))})"
            )
        return dataclasses.replace(base, run_dir=args.resume, **overrides)
    nested = {name: cls(**sections[name]) for name, (cls, _) in _train_sections().items()}
    return TrainConfig(**overrides, **nested)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train
    from .utils.distributed import shutdown

    if args.resume_step is not None and not args.resume:
        raise ValueError("--resume-step needs --resume RUN_DIR")
    config = _train_config(args)
    try:
        result = train(config, resume=bool(args.resume), resume_step=args.resume_step)
    finally:
        shutdown()  # an undestroyed gloo/nccl group can abort the process at interpreter exit
    if result.is_main and result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}; checkpoint {result.last_checkpoint}; "
              f"continue with: ditlab train --resume {result.run_dir}", file=sys.stderr)
    elif result.is_main:
        print(f"trained to step {result.step}; final loss {result.final_loss:.4f}; "
              f"last checkpoint {result.last_checkpoint}; run folder {result.run_dir}")
    return 128 + 15 if result.stopped_by == "SIGTERM" else 130 if result.stopped_by else 0


def _cmd_flops(args: argparse.Namespace) -> int:
    from .flops import run_flops_command

    print(run_flops_command(args.models or None, args.image_sizes, args.block))
    return 0


def _cmd_extract_latents(args: argparse.Namespace) -> int:
    from .data.latents import ExtractConfig, run_extract
    from .utils.distributed import shutdown

    config = ExtractConfig(**dataclass_overrides(args, ExtractConfig))
    if not config.data:
        raise ValueError("--data is required (an image folder root/<class>/<image>, fashion-mnist[:DIR] or mnist:DIR)")
    try:
        index = run_extract(config)
    finally:
        shutdown()
    print(f"latents written; index {index}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .sample import SampleConfig, run_sample
    from .utils.distributed import shutdown

    config = SampleConfig(**dataclass_overrides(args, SampleConfig))
    try:
        out = run_sample(config)
    finally:
        shutdown()
    print(f"{config.num_images} samples in {out}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .eval.evaluate import EvaluateConfig, run_evaluate

    result = run_evaluate(EvaluateConfig(**dataclass_overrides(args, EvaluateConfig)))
    for key, label in (("inception_score", "Inception Score"), ("fid", "FID"), ("sfid", "sFID"),
                       ("precision", "Precision"), ("recall", "Recall")):
        if key in result:
            print(f"{label}: {result[key]}")
    print(f"({result['num_samples']} samples, {result['num_reference']} reference images; "
          f"Inception weights {result['inception']})")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from .study import RECIPES, StudyConfig, resolve_config, run_study
    from .study_report import write_report
    from .utils.distributed import shutdown

    if args.list_recipes:
        for name, spec in RECIPES.items():
            print(f"{name}: {spec.model} under {spec.objective}; {spec.source}")
        return 0
    if args.report_only:
        print(f"report: {write_report(args.report_only)}")
        return 0
    overrides = dataclass_overrides(args, StudyConfig)
    if args.add_entry:
        overrides["add_entries"] = args.add_entry
    if args.share_ratios:
        overrides["share_ratios"] = args.share_ratios
    try:
        report = run_study(resolve_config(overrides))
    finally:
        shutdown()  # an undestroyed gloo/nccl group can abort the process at interpreter exit
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"report: {report}")
    return 0


def _add_study_parser(sub) -> None:
    from .cli_args import _parse_json_object
    from .study import StudyConfig

    st = sub.add_parser("study", help="train several backbones at equal training FLOPs; FID at budgets; report",
                        description=__import__("ditlab.study", fromlist=["x"]).__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("--report-only", metavar="DIR", default=None, help="rewrite DIR's report from its study.json")
    st.add_argument("--list-recipes", action="store_true", help="print the entry recipes and exit")
    st.add_argument("--add-entry", metavar="JSON", type=_parse_json_object, action="append", default=None,
                    help="an extra entry as an EntrySpec JSON object, e.g. '{\"name\": \"DiT-L\", \"model\": "
                         "\"DiT\", \"objective\": \"diffusion\"}' (repeatable)")
    st.add_argument("--share-ratios", metavar="R", type=int, nargs="+", default=None,
                    help="DDT encoder-sharing ratios R (uniform R and DP K = ceil(N / R))")
    add_dataclass_flags(st, StudyConfig, skip=("add_entries", "share_ratios"))
    st.set_defaults(func=_cmd_study)


EPILOG_CONVERT = """examples:
  ditlab convert DiT-XL-2-256x256.pt dit-xl2.safetensors             # official .pt -> ditlab
  ditlab convert facebook/DiT-XL-2-256 dit-xl2.safetensors           # diffusers pipeline (Hub id or folder) -> ditlab
  ditlab convert runs/x/checkpoints/step_0100000.safetensors my-dit --vae stabilityai/sd-vae-ft-ema  # -> DiTPipeline
  ditlab convert mdt_xl2_v2_ckpt.pt mdtv2.safetensors --model MDTv2-XL/2
"""


def _cmd_convert(args: argparse.Namespace) -> int:
    from .interop.convert import ConvertConfig, run_convert

    config = ConvertConfig(**dataclass_overrides(args, ConvertConfig))  # the positionals are fields too
    out, notes = run_convert(config)
    print(f"converted {config.source} -> {out}")
    for note in notes:
        print(f"note: {note}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .train import TrainConfig

    parser = argparse.ArgumentParser(prog="ditlab", description=__doc__.split("\n\n")[0].replace("``", ""),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="train a small DiT on digits or --data fashion-mnist; sample; grade",
                          description=__import__("ditlab.demo", fromlist=["x"]).__doc__)
    add_dataclass_flags(demo, DemoConfig)
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser("train", help="train a backbone (single process, or torchrun with DDP or FSDP2)",
                        epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Train any registered backbone under any objective (Gaussian diffusion, MDT's "
                                    "masked diffusion, flow matching).")
    tr.add_argument("--resume", metavar="RUN_DIR", default=None,
                    help="continue the run in RUN_DIR from its newest intact checkpoint, with its saved config")
    tr.add_argument("--resume-step", metavar="STEP", type=int, default=None,
                    help="with --resume: continue from this checkpoint step instead of the newest intact one")
    add_dataclass_flags(tr, TrainConfig)
    for name, (cls, prefix) in _train_sections().items():
        add_dataclass_flags(tr.add_argument_group(f"{name} (TrainConfig.{name})"), cls, prefix=prefix)
    tr.set_defaults(func=_cmd_train)

    from .data.latents import ExtractConfig
    from .eval.evaluate import EvaluateConfig
    from .sample import SampleConfig

    ex = sub.add_parser("extract-latents", help="encode an image folder once into VAE latent shards",
                        description=__import__("ditlab.data.latents", fromlist=["x"]).__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(ex, ExtractConfig)
    ex.set_defaults(func=_cmd_extract_latents)

    sa = sub.add_parser("sample", help="N images from a checkpoint into an ADM .npz (single process or torchrun)",
                        description=__import__("ditlab.sample", fromlist=["x"]).__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(sa, SampleConfig)
    sa.set_defaults(func=_cmd_sample)

    ev = sub.add_parser("evaluate", help="FID, sFID, IS, Precision, Recall of a sample .npz vs a reference "
                                         "(.npz or dataset)",
                        description=__import__("ditlab.eval.evaluate", fromlist=["x"]).__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_flags(ev, EvaluateConfig)
    ev.set_defaults(func=_cmd_evaluate)

    fl = sub.add_parser("flops", help="parameters and Gflops (multiply-adds) per preset",
                        description="Parameters and forward Gflops per image (multiply-accumulates, the papers' "
                                    "convention) of every preset, at each image size (latent = image / 8).")
    fl.add_argument("models", nargs="*", help="preset names (default: all)")
    fl.add_argument("--image-sizes", type=int, nargs="+", default=[256, 512], metavar="PX")
    fl.add_argument("--block", default=None, help="DiT conditioning block (adaLN-Zero, adaLN, cross-attention, "
                                                  "in-context)")
    fl.set_defaults(func=_cmd_flops)

    from .interop.convert import ConvertConfig

    co = sub.add_parser("convert", help="weights between official .pt/.ckpt, ditlab .safetensors and diffusers folders",
                        description=__import__("ditlab.interop.convert", fromlist=["x"]).__doc__,
                        epilog=EPILOG_CONVERT, formatter_class=argparse.RawDescriptionHelpFormatter)
    co.add_argument("source", help="official .pt/.ckpt, ditlab .safetensors, diffusers folder, or a Hub id")
    co.add_argument("out", help="output: .safetensors (ditlab), .pt/.ckpt (official) or a folder (diffusers)")
    add_dataclass_flags(co, ConvertConfig, skip=("source", "out"))
    co.set_defaults(func=_cmd_convert)
    _add_study_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train import CheckpointWriteError, NonFiniteLossError

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NonFiniteLossError, CheckpointWriteError) as err:
        print(f"ditlab: error: {err}", file=sys.stderr)
        return 2 if not isinstance(err, (NonFiniteLossError, CheckpointWriteError)) else 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM during training (its name is the message)
        print(f"ditlab: interrupted{f' by {stop}' if str(stop).startswith('SIG') else ''}", file=sys.stderr)
        return 128 + 15 if str(stop) == "SIGTERM" else 130  # as a shell reports a SIGTERM kill; Ctrl-C stays 130


if __name__ == "__main__":
    raise SystemExit(main())

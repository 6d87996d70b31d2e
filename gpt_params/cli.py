"""The ``gpt-params`` console script: parses flags, calls the library, shows progress."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gpt_params.errors import GptParamsError

EXIT_ERROR = 2


def _shard_from_env() -> tuple[int, int]:
    """(process index, process count) under ``accelerate launch`` / torchrun, else (0, 1).

    Shards are independent files, so no process group is needed: the launcher's RANK and
    WORLD_SIZE are enough (on a CPU-only machine, ``accelerate launch --multi_gpu --num_processes N``
    starts N CPU processes).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    return int(os.environ.get("RANK", "0")), world


def shard_path(out: str, index: int, count: int) -> str:
    """``data/zoo.h5`` -> ``data/zoo.shard1of4.h5`` for process 1 of 4; unchanged for one process."""
    if count == 1:
        return out
    p = Path(out)
    return str(p.with_name(f"{p.stem}.shard{index}of{count}{p.suffix}"))


def add_harvest_parser(sub: argparse._SubParsersAction) -> None:
    from gpt_params.config import add_arguments
    from gpt_params.harvest import HarvestConfig

    p = sub.add_parser(
        "harvest",
        help="train many networks and store their checkpoints in an HDF5 zoo",
        description="Harvest a checkpoint zoo. Rerunning the same command resumes; under "
        "`accelerate launch` each process writes its own shard (<out>.shardIofN.h5), joined by `zoo merge`.",
    )
    add_arguments(p, HarvestConfig, skip=("shard_index", "num_shards", "out"))
    p.add_argument("--out", required=True, help="output zoo file (its data lives beside it in <out>.parts/)")
    p.add_argument(
        "--download", action="store_true", help="let torchvision download MNIST/CIFAR-10 into --data-dir"
    )
    p.set_defaults(func=cmd_harvest)


def cmd_harvest(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from gpt_params.config import from_args
    from gpt_params.harvest import HarvestConfig, cohort_runs, harvest
    from gpt_params.tasks import get_task

    index, count = _shard_from_env()
    cfg = from_args(
        HarvestConfig, args, shard_index=index, num_shards=count, out=shard_path(args.out, index, count)
    )
    options = {"data_dir": cfg.data_dir, "download": args.download} if cfg.data_dir else {}
    task = get_task(cfg.task, **options)
    if task.kind == "supervised":
        _ = task.data  # load (and validate) the data before any file is touched
    n_mine = sum(
        len(cohort_runs(cfg, c))
        for c in range(-(-cfg.runs // cfg.cohort_size))
        if c % cfg.num_shards == cfg.shard_index
    )
    bars: dict[str, tqdm] = {}

    def bar(name: str) -> tqdm:  # created on first use, so input errors print before any bar
        if not bars:
            bars["runs"] = tqdm(total=n_mine, desc=f"{cfg.task} runs", unit="run", disable=index != 0)
            unit = "step" if task.kind == "supervised" else "run"
            bars["cohort"] = tqdm(total=0, desc="cohort", leave=False, unit=unit, disable=index != 0)
        return bars[name]

    def on_step(step: int, total: int) -> None:
        inner = bar("cohort")
        if inner.total != total:
            inner.reset(total=total)
        inner.update(step - inner.n)

    def on_cohort(n: int, cohort_id: int) -> None:
        bar("runs").update(n)
        bar("runs").set_postfix(cohort=cohort_id)

    writer = harvest(cfg, task=task, on_cohort=on_cohort, on_step=on_step)
    for b in reversed(bars.values()):
        b.close()
    from gpt_params.zoo_reader import Zoo

    with Zoo(writer.path) as zoo:
        print(
            f"{writer.path}: {zoo.n_runs} runs x {zoo.n_ckpts} checkpoints ({len(zoo.diverged)} diverged runs excluded)"
        )
    return 0


def add_zoo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="inspect and merge checkpoint zoos")
    zsub = p.add_subparsers(dest="zoo_cmd", required=True, metavar="{info,merge}")
    info = zsub.add_parser("info", help="runs, metric ranges and parameter statistics of a zoo")
    info.add_argument("file", help="zoo file (.h5)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument(
        "--plot", metavar="PNG", help="write metric-vs-step curves and final-metric histograms here"
    )
    info.add_argument("--metric", help="metric to plot (default: val_loss, or the first recorded)")
    info.set_defaults(func=cmd_zoo_info)
    merge = zsub.add_parser("merge", help="join zoos (e.g. the shards of a multi-process harvest) into one")
    merge.add_argument("inputs", nargs="+", help="zoo files of the same task, layout and harvest config")
    merge.add_argument("--out", required=True, help="merged zoo file")
    merge.add_argument(
        "--virtual",
        action="store_true",
        help="write an HDF5 virtual dataset over the inputs instead of copying",
    )
    merge.set_defaults(func=cmd_zoo_merge)


def _format_summary(s: dict) -> str:
    lines = [
        f"{s['path']}: task {s['task']}, {s['n_params']} parameters, {s['ckpts_per_run']} checkpoints per run",
        "runs: "
        + ", ".join(f"{k} {v}" for k, v in s["runs"].items())
        + f" ({s['diverged_runs']} diverged, excluded)",
        f"harvest: {json.dumps(s['harvest_config'], sort_keys=True)}",
        f"{'metric':<14}{'split':<7}{'which':<7}"
        + "".join(f"{q:>9}" for q in ("min", "q05", "q25", "median", "q75", "q95", "max")),
    ]
    for split, per_metric in s["metrics"].items():
        for metric, d in per_metric.items():
            for which in ("all", "final"):
                qs = d[which]
                if qs:
                    lines.append(
                        f"{metric:<14}{split:<7}{which:<7}" + "".join(f"{v:>9.4g}" for v in qs.values())
                    )
    if "params" in s:
        p = s["params"]
        lines.append(
            f"parameters (train split, {p['runs_sampled']} runs sampled): mean {p['mean']:.4g}, std {p['std']:.4g}, |max| {p['abs_max']:.4g}"
        )
        for name, d in p["per_tensor"].items():
            lines.append(f"  {name:<40} mean {d['mean']:>10.4g}  std {d['std']:>9.4g}")
    return "\n".join(lines)


def cmd_zoo_info(args: argparse.Namespace) -> int:
    from gpt_params.zoo_reader import Zoo, summarise

    with Zoo(args.file) as zoo:
        if args.metric is not None and args.metric not in zoo.metrics:
            raise GptParamsError(
                f"--metric {args.metric!r} is not in this zoo; it records {sorted(zoo.metrics)}"
            )
        summary = summarise(zoo)
        print(json.dumps(summary, indent=2) if args.json else _format_summary(summary))
        if args.plot:
            from gpt_params.plots import zoo_figure

            fig = zoo_figure(zoo, args.metric)
            fig.savefig(args.plot, dpi=120)
            print(f"plot written to {args.plot}")
    return 0


def cmd_zoo_merge(args: argparse.Namespace) -> int:
    from gpt_params.zoo import merge

    n = merge(args.inputs, args.out, virtual=args.virtual)
    print(f"{args.out}: {n} runs from {len(args.inputs)} inputs" + (" (virtual)" if args.virtual else ""))
    return 0


def add_optimize_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="update a network in one G.pt step toward a prompted metric",
        description="Take a network (a fresh random init of --task by default, or --init FILE), apply one "
        "G.pt step (or --steps R recursive ones) prompted for --target, report the metric before and after.",
    )
    p.add_argument("--model", required=True, help="shipped model name or export directory")
    p.add_argument("--task", help="task of the network; must be the model's task (default: the model's)")
    p.add_argument(
        "--target", type=float, help="prompted metric in the model's own metric (default: its best prompt)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and of the sampler")
    p.add_argument("--init", help="safetensors state dict to start from instead of a random init")
    p.add_argument("--steps", type=int, default=1, help="recursive G.pt steps")
    p.add_argument("--sampler-steps", type=int, default=5, help="diffusion sampler steps per update")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--samples", type=int, default=1, help="best-of-k candidates kept on the validation split")
    p.add_argument("--out", help="write the updated network's state dict here (safetensors)")
    p.add_argument("--device", help="torch device for the model (default: cpu)")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args: argparse.Namespace) -> int:
    import time

    import torch
    from safetensors.torch import load_file, save_file

    from gpt_params.optimizer import LearnedOptimizer

    opt = LearnedOptimizer.from_pretrained(args.model, device=args.device)
    if args.task is not None and args.task != opt.task.name:
        raise GptParamsError(
            f"--task {args.task!r} does not match model {args.model!r}, trained for {opt.task.name!r}"
        )
    if args.out is not None and not args.out.endswith(".safetensors"):
        raise GptParamsError(f"--out {args.out!r} must end in .safetensors")
    if args.init is not None:
        if not Path(args.init).is_file():
            raise GptParamsError(f"--init {args.init!r} does not exist; expected a safetensors state dict")
        try:
            state = load_file(args.init)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise GptParamsError(f"--init {args.init!r} is not a readable safetensors file ({e})") from None
        net = opt.task.layout.load_into(opt.task.build(args.seed), opt.task.layout.flatten(state))
    else:
        net = opt.task.build(args.seed)
    target = opt.best_prompt if args.target is None else args.target
    before = float(opt.measure(net)[0])
    t0 = time.perf_counter()
    new = opt.optimize(
        net,
        target,
        steps=args.steps,
        num_inference_steps=args.sampler_steps,
        guidance_scale=args.guidance,
        num_samples=args.samples,
        generator=torch.Generator().manual_seed(args.seed),
    )
    seconds = time.perf_counter() - t0
    after = float(opt.measure(new)[0])
    name = opt.metric_name
    line = f"{opt.task.name}: {name} {before:.4g} -> {after:.4g} (prompt {target:.4g}) in {seconds:.2f} s"
    if opt.task.kind == "supervised":
        test = opt.task.evaluate(
            torch.stack([opt.task.flatten(net), opt.task.flatten(new)]), splits=("test",)
        )
        line += f"; test loss {test['test_loss'][0]:.4g} -> {test['test_loss'][1]:.4g}, "
        line += f"test error {test['test_error'][0]:.2%} -> {test['test_error'][1]:.2%}"
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.out).with_suffix(".tmp")
        save_file({k: v.detach().contiguous() for k, v in new.state_dict().items()}, str(tmp))
        tmp.replace(args.out)
        print(f"updated network written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from gpt_params import __version__

    parser = argparse.ArgumentParser(
        prog="gpt-params", description="Checkpoint zoos and learned one-step optimizers (G.pt)."
    )
    parser.add_argument("--version", action="version", version=f"gpt-params {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{harvest,zoo,optimize}")
    add_harvest_parser(sub)
    add_zoo_parser(sub)
    add_optimize_parser(sub)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"gpt-params: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _one_line_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GptParamsError as e:
        print(f"gpt-params: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("gpt-params: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``gpt-params`` console script: parses flags, calls the library, shows progress."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from gpt_params.errors import DataError, GptParamsError

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
    task = get_task(cfg.task, **cfg.task_options(), **({"download": args.download} if cfg.data_dir else {}))
    task.check_data()  # load (and validate) the data before any file is touched
    n_mine = sum(
        len(cohort_runs(cfg, c))
        for c in range(-(-cfg.runs // cfg.cohort_size))
        if c % cfg.num_shards == cfg.shard_index
    )
    bars: dict[str, tqdm] = {}

    def bar(name: str) -> tqdm:  # created on first use, so input errors print before any bar
        if not bars:
            bars["runs"] = tqdm(total=n_mine, desc=f"{cfg.task} runs", unit="run", disable=index != 0)
            bars["cohort"] = tqdm(
                total=0, desc="cohort", leave=False, unit=task.harvest_unit, disable=index != 0
            )
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
    zsub = p.add_subparsers(dest="zoo_cmd", required=True, metavar="{info,merge,relabel}")
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
    relabel = zsub.add_parser(
        "relabel",
        help="score every checkpoint of a harvest for the metrics its task records now but the zoo lacks",
    )
    relabel.add_argument("file", help="harvest index file (.h5, with its .parts/ beside it)")
    relabel.set_defaults(func=cmd_zoo_relabel)


def _format_summary(s: dict) -> str:
    size = (
        f", {s['n_params']} parameters" if s["n_params"] is not None else ""
    )  # a mixed zoo's label counts them
    lines = [
        f"{s['path']}: task {s['task']}{size}, {s['ckpts_per_run']} checkpoints per run",
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
    if "architectures" in s:
        metrics = list(s["architectures"][0]["final"]) if s["architectures"] else []
        lines.append(
            f"{'architecture':<34}{'params':>8}{'train':>7}{'val':>5}{'test':>5}"
            + "".join(f"{'final ' + m:>17}" for m in metrics)
        )
        for a in s["architectures"]:
            r = a["runs"]
            lines.append(
                f"{a['member']:<34}{a['n_params']:>8}{r['train']:>7}{r['val']:>5}{r['test']:>5}"
                + "".join(f"{a['final'][m]:>17.4g}" for m in metrics)
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


def cmd_zoo_relabel(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from gpt_params.tasks import get_task
    from gpt_params.zoo import read_attrs, relabel

    attrs = read_attrs(args.file)
    data_dir = json.loads(attrs["harvest_config"]).get("data_dir")
    options = json.loads(attrs.get("task_options", "{}"))
    task = get_task(attrs["task"], **options, **({"data_dir": data_dir} if data_dir else {}))
    bars: list[tqdm] = []  # opened at the first part, so input errors print alone

    def on_part(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="relabel", unit="part", dynamic_ncols=True))
        bars[0].update(done - bars[0].n)

    try:
        added = relabel(
            args.file,
            task.metric_names,
            lambda x, names: task.evaluate_only(torch.from_numpy(x), names),
            on_part=on_part,
        )
    finally:
        for b in bars:
            b.close()
    print(f"{args.file}: added {', '.join(added)}" if added else f"{args.file}: nothing to add")
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
    p.add_argument(
        "--hidden",
        help="a family model (MLPs): the member's hidden widths, 32 or 64,32 (default: read from --init, "
        "else the family's default member)",
    )
    p.add_argument("--steps", type=int, default=1, help="recursive G.pt steps")
    p.add_argument("--sampler-steps", type=int, default=5, help="diffusion sampler steps per update")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: the model's own, 1 unless its config sets one)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="candidates drawn per update (see --combine; default: the model's own, 1 unless its config sets one)",
    )
    p.add_argument(
        "--combine",
        choices=("best", "mean", "nearest", "critic"),  # export.COMBINE (the parser loads no torch)
        default=None,
        help="with --samples > 1: keep the best candidate on the validation split, average them, "
        "keep the one whose validation metric is nearest --target, or the one the model's learned "
        "critic predicts nearest --target (no data or rollouts); default: the model's own, else best",
    )
    p.add_argument("--out", help="write the updated network's state dict here (safetensors)")
    p.add_argument("--device", help="torch device for the model (default: cpu)")
    p.set_defaults(func=cmd_optimize)


def cmd_optimize(args: argparse.Namespace) -> int:
    import time

    import torch
    from safetensors.torch import load_file

    from gpt_params.export import save_tensors
    from gpt_params.optimizer import LearnedOptimizer

    opt = LearnedOptimizer.from_pretrained(args.model, device=args.device)
    if args.task is not None and args.task != opt.task.name:
        raise GptParamsError(
            f"--task {args.task!r} does not match model {args.model!r}, trained for {opt.task.name!r}"
        )
    if args.out is not None and not args.out.endswith(".safetensors"):
        raise GptParamsError(f"--out {args.out!r} must end in .safetensors")
    task = opt.task
    if args.hidden is not None:
        if not opt.family:
            raise GptParamsError(
                f"--hidden {args.hidden!r}: model {args.model!r} serves one architecture, {task.label}"
            )
        from gpt_params.tasks.supervised import parse_hidden

        task = task.member(parse_hidden(args.hidden))
    if args.init is not None:
        if not Path(args.init).is_file():
            raise GptParamsError(f"--init {args.init!r} does not exist; expected a safetensors state dict")
        try:
            state = load_file(args.init)
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise GptParamsError(f"--init {args.init!r} is not a readable safetensors file ({e})") from None
        if opt.family and args.hidden is None:
            task = task.member_of(state)
        net = task.to_module(opt.vectors(state, hidden=task.options.get("hidden") if opt.family else None)[0])
    else:
        net = task.build(args.seed)
    if opt.family:  # bound to the member: its own best prompt and prompt clamp
        opt = LearnedOptimizer(opt.exported, task)
    target = opt.best_prompt if args.target is None else args.target
    before = float(opt.measure(net)[0])
    t0 = time.perf_counter()
    new = opt.optimize(
        net,
        target,
        steps=args.steps,
        current_loss=before,
        num_inference_steps=args.sampler_steps,
        guidance_scale=args.guidance,
        num_samples=args.samples,
        combine=args.combine,
        generator=torch.Generator().manual_seed(args.seed),
    )
    seconds = time.perf_counter() - t0
    after = float(opt.measure(new)[0])
    name = opt.metric_name
    line = f"{task.label}: {name} {before:.4g} -> {after:.4g} (prompt {target:.4g}) in {seconds:.2f} s"
    if task.test_metrics:  # data no model conditioned on
        both = torch.stack([task.flatten(net), task.flatten(new)])  # (2, D)
        test = task.evaluate_only(both, task.test_metrics)
        fmt = {"error": "{:.2%}"}
        parts = []
        for m in task.test_metrics:
            f = fmt.get(task.metric_kind(m), "{:.4g}")
            parts.append(f"{m.replace('_', ' ')} {f.format(test[m][0])} -> {f.format(test[m][1])}")
        line += "; " + ", ".join(parts)
    print(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        save_tensors({k: v.detach().contiguous() for k, v in new.state_dict().items()}, args.out)
        print(f"updated network written to {args.out}")
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="copy a trained model's export, e.g. at half precision for shipping",
        description="Copy the export of `train/diffuse.py` (<run>/model.safetensors + config.json) to --out, "
        "its learned weights stored as --dtype. Shipped models are made this way: "
        "`gpt-params export runs/mnist-mlp-loss --out gpt_params/pretrained/mnist-mlp-loss`.",
    )
    p.add_argument("run", help="export directory written by train/diffuse.py")
    p.add_argument(
        "--out", required=True, help="directory to write (created; an existing export is replaced)"
    )
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument(
        "--default-guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale the model samples with when a call names none "
        "(stored in config.json; default: keep the source's, else 1)",
    )
    p.add_argument(
        "--default-samples",
        type=int,
        default=None,
        help="candidate updates per network when a call names none (default: keep the source's, else 1)",
    )
    p.add_argument(
        "--default-combine",
        choices=("best", "mean", "nearest", "critic"),
        default=None,
        help="how one of those candidates is kept when a call names none (default: keep the source's, else best)",
    )
    p.add_argument(
        "--demo-members",
        nargs="+",
        default=None,
        metavar="H",
        help="a family model's members `gpt-params demo` shows it on, hidden widths each, e.g. 10 64,32 "
        f"(default: keep the source's, else {' '.join(','.join(map(str, h)) for h in DEMO_MEMBERS)})",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from gpt_params.export import WEIGHTS, convert_export
    from gpt_params.tasks.supervised import parse_hidden

    if Path(args.out).resolve() == Path(args.run).resolve():
        raise GptParamsError(f"--out {args.out!r} is the source export; choose another directory")
    out = convert_export(
        args.run,
        args.out,
        getattr(torch, args.dtype),
        args.default_guidance,
        args.default_samples,
        args.default_combine,
        None if args.demo_members is None else [parse_hidden(h, "--demo-members") for h in args.demo_members],
    )
    size = (out / WEIGHTS).stat().st_size / 2**20
    print(f"{out}: {args.dtype} weights, {size:.1f} MiB")
    return 0


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="one G.pt step on unseen random-init networks with every shipped model, against Adam / PPO",
        description="For each shipped model (or --models): unseen random inits of its task, one G.pt step "
        "prompted for the model's best metric, the metric reached (test split, or held-out CartPole "
        "episodes), the Adam steps (PPO updates for CartPole) needed to match it from the same inits, and "
        "the wall time of the step. Prints a table and writes two plots and a JSON report to --out.",
    )
    p.add_argument(
        "--models", nargs="+", help="shipped model names or export directories (default: all shipped)"
    )
    p.add_argument("--nets", type=int, default=16, help="unseen inits per supervised model")
    p.add_argument(
        "--rl-nets", type=int, default=8, help="unseen inits per RL model (PPO baselines are slow)"
    )
    p.add_argument(
        "--cnn-nets",
        type=int,
        default=4,
        help="unseen inits per CNN model (its Adam baseline and test-set passes are the costliest)",
    )
    p.add_argument("--adam-steps", type=int, default=3000, help="Adam baseline budget per supervised model")
    p.add_argument("--ppo-timesteps", type=int, default=40_000, help="PPO baseline budget per policy")
    p.add_argument("--seed", type=int, default=0, help="sampler and baseline seed")
    p.add_argument(
        "--data-dir",
        action="append",
        metavar="TASK=PATH",
        default=None,
        help="data of a task whose data does not ship: a directory, or a .tar.gz of one (extracted once "
        f"under data/); models whose data is absent are skipped with a note (default: {DEMO_DATA[0]})",
    )
    p.add_argument("--out", default="data/demo", help="directory for the plots and demo.json")
    p.set_defaults(func=cmd_demo)


DEMO_DATA = ("cifar10-cnn=../shared/datasets/cifar10-jpeg.tar.gz",)  # the JPEG copy beside a checkout
# hidden widths a family model is shown on: narrowest and widest, and three that no `--architectures mixed` zoo
# holds (G.pt's 10, 48, two layers of 64); an export's meta "demo_members" overrides them
DEMO_MEMBERS = ((4,), (10,), (48,), (256,), (64, 64))


def demo_members(name: str, opt) -> list[tuple[str, object]]:
    """``[(row label, optimizer)]``: the model itself, or a family model bound to each demo member."""
    if not opt.family:
        return [(name, opt)]
    from gpt_params.optimizer import LearnedOptimizer

    members = opt.exported.meta.get("demo_members", DEMO_MEMBERS)
    return [
        (f"{name} {'-'.join(map(str, h))}", LearnedOptimizer(opt.exported, opt.task.member(tuple(h))))
        for h in members
    ]


def demo_data_dirs(specs: list[str]) -> dict[str, str | None]:
    """``TASK=PATH`` flags -> ``{task: data directory, or None where PATH is absent}``; an archive is
    extracted once to ``data/<its name>``."""
    from gpt_params.tasks.data import extract_archive

    dirs: dict[str, str | None] = {}
    for spec in specs:
        task, sep, path = spec.partition("=")
        if not sep or not task or not path:
            raise GptParamsError(
                f"--data-dir {spec!r}: expected TASK=PATH, e.g. cifar10-cnn=data/cifar10-jpeg"
            )
        p = Path(path)
        if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")):
            p = extract_archive(p, Path("data") / p.name.split(".")[0])
        dirs[task] = str(p) if p.is_dir() else None
    return dirs


def cmd_demo(args: argparse.Namespace) -> int:
    import time
    from datetime import datetime

    import torch
    from tqdm.auto import tqdm

    from gpt_params.evaluate import one_step_vs_gradient
    from gpt_params.optimizer import LearnedOptimizer, pretrained_names
    from gpt_params.plots import one_step_figures
    from gpt_params.tasks.base import BaselineConfig

    models = args.models or list(pretrained_names())
    if not models:
        raise GptParamsError("no shipped models found in gpt_params/pretrained/ and no --models given")
    shipped = pretrained_names()
    for name in models:  # before any work, so a typo costs nothing
        if name not in shipped and not Path(name).is_dir():
            raise GptParamsError(
                f"unknown model {name!r}: not a directory and not a shipped model (shipped: {', '.join(shipped)})"
            )
    for flag in ("nets", "rl_nets", "cnn_nets", "adam_steps", "ppo_timesteps"):
        if getattr(args, flag) < 1:
            raise GptParamsError(
                f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}"
            )
    cfg = BaselineConfig(
        nets=args.nets,
        rl_nets=args.rl_nets,
        cnn_nets=args.cnn_nets,
        adam_steps=args.adam_steps,
        ppo_timesteps=args.ppo_timesteps,
        seed=args.seed,
    )
    data_dirs = demo_data_dirs(args.data_dir or list(DEMO_DATA))  # before the bar: errors stay one line
    t0 = time.perf_counter()
    results = []
    bar = tqdm(models, desc="demo", unit="model")
    skipped = []
    for name in bar:
        bar.set_postfix_str(name)
        opt = LearnedOptimizer.from_pretrained(name)
        if data_dirs.get(opt.task.name):
            opt = LearnedOptimizer.from_pretrained(name, data_dir=data_dirs[opt.task.name])
        try:
            opt.task.check_data()
        except DataError as e:
            skipped.append(f"skipped {name}: {e}")
            continue
        for label, member in demo_members(name, opt):
            theta0 = member.task.unseen_inits(member.task.baseline_nets(cfg))
            results.append(one_step_vs_gradient(label, member, theta0, cfg))
    if not results:
        raise GptParamsError("no model could run: " + "; ".join(skipped))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig_a, fig_b = one_step_figures(results)
    plots = (out / "desired_vs_observed.png", out / "one_step_vs_adam.png")
    fig_a.savefig(plots[0], dpi=110)
    fig_b.savefig(plots[1], dpi=110)
    rows = [
        {
            "model": r.model,
            "task": r.task,
            "metric": r.metric,
            "nets": r.nets,
            "start": r.start,
            "prompt": r.prompt,
            "achieved": r.achieved,
            "baseline": r.baseline.name,
            # None: not matched within baseline_max_steps (JSON has no inf)
            "baseline_steps": r.baseline_steps if math.isfinite(r.baseline_steps) else None,
            "baseline_matched": r.baseline_matched,
            "baseline_max_steps": r.baseline.budget,
            "step_seconds": r.step_seconds,
            "r2": r.alignment["r2"],
        }
        for r in results
    ]
    seconds = time.perf_counter() - t0
    report = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": seconds,
        "cpu_threads": torch.get_num_threads(),
        "models": rows,
        "skipped": skipped,
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2))
    print(demo_table(results))
    for note in skipped:
        print(note)
    print(f"plots: {plots[0]}, {plots[1]}; numbers: {out / 'demo.json'} ({seconds:.0f} s)")
    return 0


def demo_table(results) -> str:
    head = (
        "model",
        "nets",
        "metric",
        "start",
        "prompt",
        "one step",
        "R^2",
        "gradient steps to match",
        "step",
    )
    lines = []
    for r in results:
        budget = r.baseline.budget
        steps = f"{r.baseline_steps:.0f}" if math.isfinite(r.baseline_steps) else f">{budget}"
        if r.baseline_matched < 1:
            steps += f" ({r.baseline_matched:.0%} matched)"
        lines.append(
            (r.model, str(r.nets), r.metric, f"{r.start:.4g}", f"{r.prompt:.4g}", f"{r.achieved:.4g}",
             f"{r.alignment['r2']:.2f}", f"{steps} ({r.baseline.name.split(',')[0]})", f"{r.step_seconds * 1e3:.0f} ms")
        )  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    table = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [
        fmt.format(*line) for line in lines
    ]
    return "\n".join(table)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (argparse prints the whole usage block first); subcommands inherit it."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from gpt_params import __version__

    parser = _OneLineParser(
        prog="gpt-params", description="Checkpoint zoos and learned one-step optimizers (G.pt)."
    )
    parser.add_argument("--version", action="version", version=f"gpt-params {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{harvest,zoo,optimize,demo,export}")
    add_harvest_parser(sub)
    add_zoo_parser(sub)
    add_optimize_parser(sub)
    add_demo_parser(sub)
    add_export_parser(sub)
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
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (python's documented recipe)
        return 0


if __name__ == "__main__":
    sys.exit(main())

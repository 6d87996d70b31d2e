"""Model-choice ablation: each variant trained for the same wall time on the same zoo, then scored by
eval/prompting.py on the zoo's unseen test-split inits (or, to choose a recipe, its val-split ones).

    python benchmarks/ablation.py --zoo data/mnist-mlp-gpt5k.h5 --minutes 15 --out runs/ablation
    python benchmarks/ablation.py --zoo data/zoo.h5 --minutes 4 --parallel --out runs/ablation   # one GPU
    python benchmarks/ablation.py --zoo data/cifar10-cnn.h5 --minutes 15 --split val --nets 16 \
        --variants reference no-output chunk small base --train-args "--width 128 --depth 4 --output-weight 1"

Variant flags come after ``--train-args``, so a variant overrides them (``small`` restores the
preset's width and depth, ``no-output`` turns the function-space term off).

Writes ``<out>/<variant>/`` (export, logs, prompting.json) and ``<out>/ablation.json``, and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

VARIANTS = {
    "reference": [],
    "no-output": ["--output-weight", "0"],
    "small": ["--preset", "small", "--width", "0", "--depth", "0"],
    "base": ["--preset", "base", "--width", "0", "--depth", "0"],
    "neuron": ["--no-augment"],
    "neuron-aug": ["--augment"],
    "chunk": ["--tokenizer", "chunk", "--augment"],
    "chunk-noaug": ["--tokenizer", "chunk", "--no-augment"],
}
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--minutes", type=float, default=15.0, help="training wall time per variant")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--preset", default="small")
    p.add_argument("--parallel", action="store_true", help="train all variants at once (a GPU or many cores)")
    p.add_argument("--nets", type=int, default=32, help="unseen nets scored per variant")
    p.add_argument(
        "--split",
        default="test",
        choices=("val", "test"),
        help="inits scored, and the split their metric is read on",
    )
    p.add_argument(
        "--sampler", default="ddim:5", help="sampler:steps used to score (eval/prompting.py --samplers)"
    )
    p.add_argument("--train-args", default="", help="extra flags for train/diffuse.py, one string")
    a = p.parse_args()
    out = Path(a.out)
    procs = {}
    for name in a.variants:
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, str(ROOT / "train" / "diffuse.py"), "--zoo", a.zoo, "--preset", a.preset,
            "--out", str(d), "--max-minutes", str(a.minutes), "--max-steps", "1000000",
            "--eval-every", "0", "--save-every", "0", *a.train_args.split(), *VARIANTS[name],
        ]  # fmt: skip
        log = open(d / "train.log", "w")  # noqa: SIM115 - closed when the process ends
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        if not a.parallel:
            wait(name, *procs[name])
    for name, (proc, log) in procs.items():
        wait(name, proc, log)
    rows = []
    for name in a.variants:
        d = out / name
        cmd = [
            sys.executable, str(ROOT / "eval" / "prompting.py"), "--model", str(d), "--zoo", a.zoo,
            "--nets", str(a.nets), "--samplers", a.sampler, "--split", a.split, "--achieved-on", a.split,
            "--out", str(d / "prompting.json"),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        cfg = json.loads((d / "config.json").read_text())
        res = json.loads((d / "prompting.json").read_text())["results"][0]
        rows.append(
            {
                "variant": name,
                "params": cfg["n_model_params"],
                "steps": cfg["train_steps"],
                "samples_per_s": cfg["timing"]["samples_per_s"],
                "r2": res["r2"],
                "one_step_loss": res.get(f"one_step_{a.split}_loss_median", float("nan")),
                "one_step_error": res.get(f"one_step_{a.split}_error_median", float("nan")),
            }
        )
    report = {
        "zoo": a.zoo,
        "minutes": a.minutes,
        "preset": a.preset,
        "split": a.split,
        "train_args": a.train_args,
        "date": datetime.now(UTC).isoformat(),
        "rows": rows,
    }
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    print(
        f"| variant | params | steps | pairs/s | R^2 | one-step {a.split} loss | one-step {a.split} error |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['samples_per_s']:.0f} | {r['r2']:.3f} "
            f"| {r['one_step_loss']:.3f} | {r['one_step_error']:.1%} |"
        )


def wait(name: str, proc: subprocess.Popen, log) -> None:
    if proc.wait() != 0:
        log.close()
        sys.exit(f"ablation.py: error: variant {name!r} failed; see its train.log")
    log.close()


if __name__ == "__main__":
    main()

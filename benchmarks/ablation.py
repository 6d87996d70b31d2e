"""Tokenizer and augmentation ablation: each variant trained for the same wall time on the same zoo,
then scored by eval/prompting.py on the zoo's unseen test-split inits.

    python benchmarks/ablation.py --zoo data/mnist-mlp-gpt5k.h5 --minutes 15 --out runs/ablation
    python benchmarks/ablation.py --zoo data/zoo.h5 --minutes 4 --parallel --out runs/ablation   # one GPU

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
            "--eval-every", "0", "--save-every", "0", *VARIANTS[name], *a.train_args.split(),
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
            "--nets", str(a.nets), "--samplers", a.sampler, "--out", str(d / "prompting.json"),
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
                **{k: v for k, v in res.items() if k.startswith("one_step_test")},
            }
        )
    report = {
        "zoo": a.zoo,
        "minutes": a.minutes,
        "preset": a.preset,
        "date": datetime.now(UTC).isoformat(),
        "rows": rows,
    }
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    print("| variant | params | steps | pairs/s | R^2 | one-step test loss | one-step test error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['samples_per_s']:.0f} | {r['r2']:.3f} "
            f"| {r.get('one_step_test_loss_median', float('nan')):.3f} "
            f"| {r.get('one_step_test_error_median', float('nan')):.1%} |"
        )


def wait(name: str, proc: subprocess.Popen, log) -> None:
    if proc.wait() != 0:
        log.close()
        sys.exit(f"ablation.py: error: variant {name!r} failed; see its train.log")
    log.close()


if __name__ == "__main__":
    main()

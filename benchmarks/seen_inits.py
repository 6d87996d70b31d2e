"""Prompt alignment on inits of runs the model *trained* on, to set beside eval/prompting.py's unseen ones.

    python benchmarks/seen_inits.py --model runs/cartpole-ppo-tiny --zoo data/cartpole-ppo.h5 --guidance 1 4
    python benchmarks/seen_inits.py --model runs/mnist-mlp-family --zoo data/mnist-mlp-family.h5 --hidden 32

A model that aligns no better on its own train-split inits than on unseen ones is limited by fit,
not by generalisation. Prints one JSON line per guidance scale.
"""

from __future__ import annotations

import argparse
import json

import torch

from gpt_params.errors import GptParamsError
from gpt_params.evaluate import bind_member, held_rows, prompt_alignment
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.scripting import fail, hidden_or_exit
from gpt_params.zoo_reader import Zoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory or shipped model name")
    p.add_argument("--zoo", required=True, help="the zoo the model was trained on")
    p.add_argument("--nets", type=int, default=32, help="first train-split runs whose inits are used")
    p.add_argument("--prompts", type=int, default=20, help="prompts per network")
    p.add_argument("--sampler-steps", type=int, default=10, help="DDIM steps")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="classifier-free guidance scales")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", default=None, help="a family model: the member (hidden widths, e.g. 64,32)")
    a = p.parse_args()
    hidden = hidden_or_exit(a.hidden)
    try:
        zoo = Zoo(a.zoo)
        opt = bind_member(LearnedOptimizer.from_pretrained(a.model), zoo, hidden)
        rows = held_rows(zoo, opt.task, "train")
        if rows is None or a.nets < 1 or len(rows) == 0:
            raise GptParamsError(
                f"{zoo.label} has no train-split runs of {opt.task.label} (asked for {a.nets})"
            )
        rows = rows[: a.nets]
    except GptParamsError as e:
        raise fail(str(e)) from None
    theta0 = torch.stack([torch.from_numpy(zoo.checkpoint(int(r), 0)) for r in rows])  # (N, D)
    for g in a.guidance:
        align = prompt_alignment(
            opt, theta0, n_prompts=a.prompts, num_inference_steps=a.sampler_steps, guidance_scale=g,
            num_samples=1, sampler="ddim", generator=torch.Generator().manual_seed(a.seed),
        )  # fmt: skip
        print(json.dumps({"split": "train", "nets": len(rows), "guidance": g, "r2": align["r2"]}))


if __name__ == "__main__":
    main()

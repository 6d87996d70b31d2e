"""Gym rollouts of generated CartPole policies, in a plain gymnasium loop and inside an SB3 PPO policy.

    python eval/rollout.py --model runs/cartpole-return --nets 16 --episodes 100
    python eval/rollout.py --model runs/cartpole-return --prompts 100 300 500 --record data/cartpole.gif

For ``--nets`` unseen random initialisations (SB3's init, seeds the zoo never used) and each prompted
return: one G.pt step, then ``--episodes`` seeded episodes per policy (seeds disjoint from the ones the
zoo's returns were measured on) in gymnasium's vectorised CartPole-v1, deterministic actions, and the
same episodes with actions sampled from the policy (``mean_sampled_return``, what a ``return_sampled``
model is prompted with). Means come with a 95% confidence interval over policies. ``--sb3-policies`` of them are also loaded
into a real ``stable_baselines3.PPO`` policy and scored with SB3's ``evaluate_policy`` on the same seeds,
as a check that the vectors are genuine SB3 policies. Writes a JSON report and a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch
from scipy import stats

from gpt_params.errors import GptParamsError
from gpt_params.optimizer import LearnedOptimizer
from gpt_params.scripting import add_out_argument, fail, report_path, utc_now
from gpt_params.tasks.cartpole import ROLLOUT_SEED, fresh_initial_states


def mean_ci(per_policy: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``per_policy`` ``(N,)`` with a 95% t-interval (half-width 0 for one policy)."""
    m = float(per_policy.mean())
    if len(per_policy) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.975, len(per_policy) - 1) * stats.sem(per_policy))
    return m, m - half, m + half


def sb3_returns(task, theta: torch.Tensor, episodes: int) -> np.ndarray:
    """Mean return of each policy in ``theta`` ``(B, D)`` run by SB3's own PPO policy and evaluator."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from gpt_params.recipes import PPORecipe
    from gpt_params.tasks.ppo import make_ppo

    out = []
    for vec in theta:
        model = make_ppo(PPORecipe(n_envs=1, batch_size=32), seed=0, hidden=task.hidden)
        env = model.get_env()
        state = model.policy.state_dict()
        state.update({k: v.clone() for k, v in task.layout.unflatten(vec).items()})
        model.policy.load_state_dict(state)
        rets = []
        for i in range(episodes):
            env.seed(ROLLOUT_SEED + i)
            r, _ = evaluate_policy(model, env, n_eval_episodes=1, deterministic=True)
            rets.append(r)
        env.close()
        out.append(np.mean(rets))
    return np.array(out)


def record_gif(task, vec: torch.Tensor, path: str) -> str:
    """Save one episode as a GIF; returns a message (what to install when a writer is missing)."""
    try:
        import pygame  # noqa: F401  (gymnasium's CartPole renderer)
        from PIL import Image
    except ImportError as e:
        return f"--record skipped: {e.name} is not installed; pip install 'gymnasium[classic-control]' pillow"
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    obs, _ = env.reset(seed=ROLLOUT_SEED)
    net = task.to_module(vec)
    frames = [env.render()]
    for _ in range(500):
        with torch.no_grad():
            action = int(net(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax())
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(env.render())
        if terminated or truncated:
            break
    env.close()
    images = [Image.fromarray(f) for f in frames[::2]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40, loop=0)
    return f"episode of {len(frames) - 1} steps saved to {path}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="export directory or shipped model name (a cartpole model)")
    p.add_argument("--nets", type=int, default=16, help="unseen random-init policies per prompt")
    p.add_argument(
        "--prompts", type=float, nargs="+", default=None, help="prompted returns (default: the best)"
    )
    p.add_argument("--episodes", type=int, default=100, help="seeded episodes per policy")
    p.add_argument("--sb3-policies", type=int, default=2, help="policies per prompt also run through SB3 PPO")
    p.add_argument("--sampler-steps", type=int, default=5)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument(
        "--samples",
        type=int,
        default=1,
        help="candidate updates per policy; above 1 the model's critic keeps the one it predicts nearest the prompt",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--record", default=None, help="GIF of one episode of the best-prompt policy")
    add_out_argument(p, "rollout.json")
    a = p.parse_args()

    try:
        opt = LearnedOptimizer.from_pretrained(a.model)
    except GptParamsError as e:
        raise fail(str(e)) from None
    task = opt.task
    if opt.metric != "return":
        raise fail(
            f"{a.model!r} is a {task.name!r} model conditioned on {opt.metric_name}; rollouts need a return"
        )
    if a.episodes < 1 or a.nets < 1 or a.samples < 1:
        raise fail(
            f"--episodes, --nets and --samples must be positive, got {a.episodes}, {a.nets}, {a.samples}"
        )
    if a.samples > 1 and not opt.has_critic:
        raise fail(f"--samples {a.samples} needs a critic and {a.model} has none")
    prompts = a.prompts or [opt.best_prompt]
    theta0 = task.unseen_inits(a.nets)  # (N, D)
    states = fresh_initial_states(a.episodes)
    start = task.episode_returns(theta0, states).mean(1)  # (N,)
    report = {
        "model": str(a.model),
        "nets": a.nets,
        "episodes": a.episodes,
        "samples": a.samples,
        "guidance": a.guidance,
        "sampler_steps": a.sampler_steps,
        "episode_seeds": [ROLLOUT_SEED, ROLLOUT_SEED + a.episodes - 1],
        "date": utc_now(),
        "start": dict(zip(("mean", "ci_low", "ci_high"), mean_ci(start), strict=True)),
        "results": [],
    }
    best_vec = None
    for prompt in prompts:
        t0 = time.perf_counter()
        new = opt.step(
            theta0, prompt, num_inference_steps=a.sampler_steps, guidance_scale=a.guidance,
            num_samples=a.samples, combine="critic" if a.samples > 1 else "best",
            generator=torch.Generator().manual_seed(a.seed),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        per_policy = task.episode_returns(new, states).mean(1)  # (N,)
        m, lo, hi = mean_ci(per_policy)
        sampled = task.held_out(a.episodes).sampled_returns(new).mean(1)  # (N,) actions drawn, as PPO acts
        row = {
            "prompt": prompt,
            "mean_return": m,
            "ci95": [lo, hi],
            "median_policy_return": float(np.median(per_policy)),
            "policies_at_500": float((per_policy >= 500).mean()),
            "step_seconds_per_policy": seconds / a.nets,
            "mean_sampled_return": dict(zip(("mean", "ci_low", "ci_high"), mean_ci(sampled), strict=True)),
        }
        if a.sb3_policies:
            k = min(a.sb3_policies, a.nets)
            row["sb3_check"] = {
                "plain_loop": per_policy[:k].tolist(),
                "sb3_ppo": sb3_returns(task, new[:k], a.episodes).tolist(),
            }
        report["results"].append(row)
        print(json.dumps(row))
        if prompt == max(prompts):
            best_vec = new[int(np.argmax(per_policy))]
    out = report_path(a.model, a.out, "rollout.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    figure(report).savefig(out.with_suffix(".png"), dpi=120)
    print(f"report: {out}\nplot: {out.with_suffix('.png')}")
    if a.record:
        print(record_gif(task, best_vec, a.record))


def figure(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    x = np.array([r["prompt"] for r in rows])
    y = np.array([r["mean_return"] for r in rows])
    err = np.array([[r["mean_return"] - r["ci95"][0], r["ci95"][1] - r["mean_return"]] for r in rows]).T
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label="one G.pt step, argmax actions (95% CI)")
    s = [r["mean_sampled_return"] for r in rows]
    ys = np.array([v["mean"] for v in s])
    err_s = np.array([[v["mean"] - v["ci_low"], v["ci_high"] - v["mean"]] for v in s]).T
    ax.errorbar(x, ys, yerr=err_s, fmt="s-", capsize=3, label="same steps, sampled actions (95% CI)")
    ax.axhline(report["start"]["mean"], color="gray", ls=":", label="random init")
    ax.plot([0, 500], [0, 500], "k--", lw=1, label="perfect alignment")
    ax.set_xlabel("prompted return")
    ax.set_ylabel(f"mean return over {report['episodes']} seeded episodes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()

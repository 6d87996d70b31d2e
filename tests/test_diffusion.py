"""Known-answer tests of the sampling loop (``gpt_params.diffusion.sample``): stand-in denoisers whose
x0-predictions are known, checked against the DDIM update written out from the papers."""

import math

import pytest
import torch

from gpt_params.diffusion import DiffusionConfig, sample

from .conftest import tiny_denoiser

B, D = 3, 6


class Recorder:
    """A denoiser with the model's call signature that returns ``predict(theta_start, keep)`` and
    records every call's ``(x, t, keep)``."""

    def __init__(self, predict):
        self.predict = predict
        self.calls = []

    def __call__(self, x, t, theta_start, start_metric, prompt, keep):
        self.calls.append((x.clone(), t.clone(), keep.clone()))
        return self.predict(theta_start, keep)


def inputs(b=B):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, D, generator=g), torch.zeros(b), torch.zeros(b)  # theta_start, metric, prompt


def draw(model, num_inference_steps, **kw):
    theta_start, start_metric, prompt = inputs()
    return sample(
        model,
        DiffusionConfig(),
        theta_start,
        start_metric,
        prompt,
        num_inference_steps=num_inference_steps,
        generator=torch.Generator().manual_seed(1),
        **kw,
    )


def cosine_alpha_bar(cfg: DiffusionConfig) -> torch.Tensor:
    """alpha_bar_t of the squaredcos_cap_v2 schedule (Nichol & Dhariwal 2021, betas capped at 0.999)."""
    assert cfg.beta_schedule == "squaredcos_cap_v2"
    n = cfg.num_train_timesteps

    def f(t):
        return math.cos((t / n + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(n)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def reference_ddim(x0: torch.Tensor, noise: torch.Tensor, n: int):
    """Deterministic DDIM (eta 0, Song et al. eq. 12) with a fixed x0-prediction, "trailing" timesteps
    (Lin et al. 2024, table 2) and alpha_bar 1 past the last step: the model inputs ``[(x, t)]`` and
    the final sample."""
    cfg = DiffusionConfig()
    abar = cosine_alpha_bar(cfg)
    T = cfg.num_train_timesteps
    ts = [round(T - k * T / n) - 1 for k in range(n)]
    x, seen = noise.double(), []
    for t in ts:
        seen.append((x.float(), t))
        prev = t - T // n
        a, a_prev = abar[t], (abar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return seen, x.float()


X0 = torch.linspace(-2.0, 3.0, D).expand(B, D)


def fixed(x0):
    """A denoiser that predicts ``x0`` (D,) for every row of any batch."""
    return Recorder(lambda theta_start, keep: x0[0].expand(len(keep), D).clone())


@pytest.mark.parametrize("n", [1, 2, 4, 5, 10, 20])
def test_ddim_ends_exactly_at_a_fixed_x0_prediction(n):
    # trailing spacing over 1,000 steps ends at t = 1000 / n - 1, whose previous step is t < 0, where
    # set_alpha_to_one makes alpha_bar 1: the last update is sqrt(1) * x0 + sqrt(0) * eps = x0
    model = fixed(X0)
    out = draw(model, n)
    assert len(model.calls) == n
    assert torch.equal(out, X0), (out - X0).abs().max()


@pytest.mark.parametrize("n", [3, 5, 7])
def test_ddim_steps_follow_the_deterministic_ddim_update(n):
    model = fixed(X0)
    out = draw(model, n)
    noise = model.calls[0][0]  # the sampler's starting point, however it was drawn
    assert 0.5 < noise.std() < 2 and not torch.equal(noise[0], noise[1])
    seen, expected = reference_ddim(X0.double(), noise, n)
    assert [int(t[0]) for _, t, _ in model.calls] == [t for _, t in seen]
    for (x, _, _), (x_ref, _) in zip(model.calls, seen, strict=True):
        torch.testing.assert_close(x, x_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def cond(theta_start):
    return theta_start + 1.0


def uncond(theta_start):
    return 0.5 * theta_start - 2.0


def by_keep(theta_start, keep):
    return torch.where(keep[:, None], cond(theta_start), uncond(theta_start))


@pytest.mark.parametrize("s", [0.0, 1.0, 2.0, 3.5])
def test_guidance_extrapolates_from_the_unconditional_to_the_conditional_prediction(s):
    model = Recorder(by_keep)
    out = draw(model, 5, guidance_scale=s)  # DDIM-5 ends at its last x0-prediction (see above)
    theta_start = inputs()[0]
    expected = uncond(theta_start) + s * (cond(theta_start) - uncond(theta_start))
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert len(model.calls) == 5


def test_guidance_one_calls_the_model_once_per_step_on_the_conditional_batch_only():
    model = Recorder(by_keep)
    draw(model, 4, guidance_scale=1.0)
    assert len(model.calls) == 4
    for x, t, keep in model.calls:
        assert x.shape == (B, D) and t.shape == (B,) and keep.all()
    guided = Recorder(by_keep)
    draw(guided, 4, guidance_scale=2.0)
    assert sum(int((~keep).sum()) for _, _, keep in guided.calls) == 4 * B  # the unconditional half


@pytest.mark.parametrize("n", [1, 5, 10])
def test_clamp_bounds_every_x0_prediction(n):
    low = torch.linspace(-1.0, -0.5, D)
    high = torch.linspace(0.5, 1.0, D)
    wild = torch.tensor([10.0, -10.0, 0.0, 0.7, -0.7, 3.0]).expand(B, D)
    out = draw(fixed(wild), n, clamp=(low, high))
    assert (out >= low).all() and (out <= high).all(), out
    assert torch.equal(out, torch.maximum(torch.minimum(wild, high), low))
    inside = (0.4 * (low + high)).expand(B, D)
    out = draw(fixed(inside), n, clamp=(low, high))
    assert torch.equal(out, inside)  # a prediction within the bounds is left alone


def test_a_networks_sample_does_not_depend_on_the_batch_it_is_in():
    model, d = tiny_denoiser("digits-mlp")
    g = torch.Generator().manual_seed(0)
    theta_start = torch.randn(3, d, generator=g)
    start_metric, prompt = torch.tensor([1.0, -0.5, 0.3]), torch.tensor([-1.0, 0.8, -0.2])

    def first_row(b, **kw):
        out = sample(
            model,
            DiffusionConfig(),
            theta_start[:b],
            start_metric[:b],
            prompt[:b],
            generator=torch.Generator().manual_seed(7),
            **kw,
        )
        return out[0]

    for kw in ({}, {"guidance_scale": 2.0}):
        alone, in_batch = first_row(1, **kw), first_row(3, **kw)
        assert not torch.equal(in_batch, theta_start[0])
        torch.testing.assert_close(in_batch, alone, rtol=1e-5, atol=1e-5)

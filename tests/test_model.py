import re

import numpy as np
import pytest
import torch

from gpt_params.diffusion import DiffusionConfig, diffusion_loss, sample, train_scheduler
from gpt_params.errors import GptParamsError
from gpt_params.export import Exported, load_export, save_export
from gpt_params.layout import permute, random_perms
from gpt_params.model import PRESETS, ModelConfig, ParamDiffusionTransformer, count_parameters, preset_config
from gpt_params.normalize import ParamNormalizer
from gpt_params.tasks import get_task


def make(task_name, tokenizer="neuron", preset="tiny"):
    task = get_task(task_name)
    cfg = ModelConfig(**{**PRESETS[preset].to_dict(), "tokenizer": tokenizer, "chunk": 64})
    torch.manual_seed(0)
    return task, ParamDiffusionTransformer(task.layout, task.symmetries, cfg)


def inputs(task, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = task.layout.numel
    return (
        torch.randn(b, d, generator=g),
        torch.randint(0, 1000, (b,), generator=g),
        torch.randn(b, d, generator=g),
        torch.randn(b, generator=g),
        torch.randn(b, generator=g),
    )


def randomise_heads(model):
    """Give the zero-initialised decoders weights, so outputs depend on the inputs."""
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.05)


@pytest.mark.parametrize("tokenizer", ["neuron", "chunk"])
@pytest.mark.parametrize("task_name", ["mnist-mlp", "cartpole", "mnist-cnn"])
def test_untrained_model_returns_the_start_and_has_the_right_shape(task_name, tokenizer):
    task, model = make(task_name, tokenizer)
    noisy, t, start, m0, p = inputs(task)
    out = model(noisy, t, start, m0, p)
    assert out.shape == start.shape
    assert torch.equal(out, start)


@pytest.mark.parametrize("tokenizer", ["neuron", "chunk"])
def test_decoders_reach_every_parameter(tokenizer):
    task, model = make("cartpole", tokenizer)
    randomise_heads(model)
    noisy, t, start, m0, p = inputs(task)
    assert ((model(noisy, t, start, m0, p) - start).abs() > 0).all()


@pytest.mark.parametrize("task_name", ["mnist-mlp", "cartpole", "mnist-cnn"])
def test_neuron_model_is_permutation_equivariant(task_name):
    task, model = make(task_name, "neuron")
    randomise_heads(model)
    model.eval()
    noisy, t, start, m0, p = inputs(task)
    perms = random_perms(task.symmetries, 3, torch.Generator().manual_seed(5))

    def perm(x):
        return permute(x, task.layout, task.symmetries, perms)

    out = model(noisy, t, start, m0, p)
    out_p = model(perm(noisy), t, perm(start), m0, p)
    torch.testing.assert_close(out_p, perm(out), rtol=1e-4, atol=1e-5)


def test_chunk_model_is_not_equivariant():  # the property the neuron tokenizer adds
    task, model = make("mnist-mlp", "chunk")
    randomise_heads(model)
    noisy, t, start, m0, p = inputs(task)
    perms = random_perms(task.symmetries, 3, torch.Generator().manual_seed(5))

    def perm(x):
        return permute(x, task.layout, task.symmetries, perms)

    assert not torch.allclose(
        model(perm(noisy), t, perm(start), m0, p), perm(model(noisy, t, start, m0, p)), atol=1e-4
    )


def test_tiny_preset_is_under_a_million_parameters():
    for name in ("mnist-mlp", "cartpole", "mnist-cnn"):
        assert count_parameters(make(name)[1]) < 1_000_000


def fixed_batch(task, n):
    """A random batch of training pairs: starts, futures ``(n, D)``, start metrics and prompts ``(n,)``."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(n, task.layout.numel, generator=g)
    future = start + 0.5 * torch.randn(n, task.layout.numel, generator=g)
    return start, future, torch.randn(n, generator=g), torch.randn(n, generator=g)


def test_loss_falls_on_a_fixed_batch():
    task, model = make("digits-mlp")
    sched = train_scheduler(DiffusionConfig())
    start, future, m0, p = fixed_batch(task, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def loss(seed):
        return diffusion_loss(model, sched, start, future, m0, p, 0.1, torch.Generator().manual_seed(seed))[0]

    first = sum(loss(s).item() for s in range(5)) / 5
    for s in range(150):
        opt.zero_grad()
        loss(100 + s).backward()
        opt.step()
    last = sum(loss(s).item() for s in range(5)) / 5
    assert last < 0.7 * first


def output_term_case():
    """A digits model, its training scheduler, a fixed batch and an ``output_loss``: the networks'
    squared output difference on 16 probe inputs, ``(B,)``."""
    task, model = make("digits-mlp")
    probes = task.probe_inputs(None, 16, 0)

    def outputs_apart(a, b):  # (B,)
        return (task.outputs(a, probes) - task.outputs(b, probes)).pow(2).mean(dim=(1, 2))

    return model, train_scheduler(DiffusionConfig()), fixed_batch(task, 8), outputs_apart


def test_output_term_adds_a_weighted_function_space_loss():
    model, sched, (start, future, m0, p), outputs_apart = output_term_case()

    def loss(*extra):
        return diffusion_loss(
            model, sched, start, future, m0, p, 0.1, torch.Generator().manual_seed(3), *extra
        )

    plain, parts0 = loss()
    off, parts_off = loss(outputs_apart, 0.0)
    both, parts = loss(outputs_apart, 2.0)
    assert set(parts0) == set(parts_off) == {"param"} and off.item() == plain.item()
    assert parts["param"] == parts0["param"] and parts["output"] > 0
    assert both.item() == pytest.approx(parts["param"] + 2.0 * parts["output"], rel=1e-5)
    # the term reaches the model's weights
    grad_plain = torch.autograd.grad(plain, list(model.parameters()), allow_unused=True)
    grad_both = torch.autograd.grad(both, list(model.parameters()), allow_unused=True)
    assert any(a is not None and not torch.allclose(a, b) for a, b in zip(grad_plain, grad_both, strict=True))


def test_output_schedule_flat_applies_the_term_at_pure_noise_where_signal_gives_it_no_weight():
    model, sched, (start, future, m0, p), outputs_apart = output_term_case()

    def parts(schedule, t_power):
        g = torch.Generator().manual_seed(3)
        return diffusion_loss(
            model, sched, start, future, m0, p, 0.1, g, outputs_apart, 1.0, None, t_power, schedule
        )[1]

    # t_power 1000 draws timesteps within 1% of the last, where alpha_bar_t is below 1e-4
    noisy_signal, noisy_flat = parts("signal", 1000.0), parts("flat", 1000.0)
    assert noisy_signal["param"] == noisy_flat["param"]
    assert noisy_flat["output"] > 0 and noisy_signal["output"] < 1e-3 * noisy_flat["output"]
    # at uniform timesteps the flat term is the larger: alpha_bar_t <= 1 scales the signal one down
    assert parts("flat", 1.0)["output"] > parts("signal", 1.0)["output"] > 0
    with pytest.raises(ValueError, match="output_schedule 'late'"):
        parts("late", 1.0)


def test_export_round_trip_gives_identical_samples(tmp_path):
    task, model = make("digits-mlp")
    randomise_heads(model)
    norm = ParamNormalizer(torch.zeros(task.layout.numel), torch.ones(task.layout.numel))
    dcfg = DiffusionConfig()
    meta = {
        "task": "digits-mlp",
        "layout": task.layout.to_json(),
        "metric": "val_loss",
        "best_prompt": 0.1,
        "metric_range": [0.1, 2.4],
    }
    save_export(tmp_path, model, norm, None, dcfg, meta)
    loaded = load_export(tmp_path)
    assert isinstance(loaded, Exported) and loaded.meta["metric"] == "val_loss"
    # the weights get the umask's permissions, like the config (not owner-only)
    mode = (tmp_path / "config.json").stat().st_mode & 0o777
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == mode
    _, _, start, m0, p = inputs(task)
    a = sample(
        model.eval(), dcfg, start, m0, p, 4, guidance_scale=2.0, generator=torch.Generator().manual_seed(3)
    )
    b = sample(
        loaded.model,
        loaded.diffusion,
        start,
        m0,
        p,
        4,
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(a, b)


def test_corrupt_or_missing_exports_are_clear_errors(tmp_path):
    from gpt_params.errors import GptParamsError

    with pytest.raises(GptParamsError, match="lacks config.json"):
        load_export(tmp_path)
    task, model = make("digits-mlp")
    norm = ParamNormalizer(torch.zeros(task.layout.numel), torch.ones(task.layout.numel))
    save_export(
        tmp_path,
        model,
        norm,
        None,
        DiffusionConfig(),
        {"task": "digits-mlp", "layout": task.layout.to_json()},
    )
    with pytest.raises(GptParamsError, match=r"lacks \['metric', 'metric_range', 'best_prompt'\]"):
        load_export(tmp_path)  # the optimizer's contract (export.REQUIRED_META) is checked on load
    meta = {"metric": "val_loss", "metric_range": [0.1, 2.5], "best_prompt": 0.2}
    save_export(
        tmp_path, model, norm, None, DiffusionConfig(),
        {"task": "digits-mlp", "layout": task.layout.to_json(), **meta},
    )  # fmt: skip
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(GptParamsError, match="not a readable safetensors"):
        load_export(tmp_path)


def test_export_meta_builds_the_contract_from_the_zoos_metrics():
    from gpt_params.errors import GptParamsError
    from gpt_params.export import REQUIRED_META, export_meta

    task = get_task("digits-mlp")
    finals = np.linspace(0.1, 1.0, 20)  # (R,) where 20 runs end
    every = np.concatenate([finals, [2.4, np.nan]])
    meta = export_meta(task, "val_loss", finals, every, train={"lr": 1e-3})
    assert set(REQUIRED_META) <= set(meta) and meta["train"] == {"lr": 1e-3}
    assert meta["metric_range"] == [0.1, 2.4]
    assert meta["best_prompt"] == pytest.approx(np.quantile(finals, 0.05))  # lower is better
    cart = export_meta(get_task("cartpole"), "return_mean", finals, every)
    assert cart["best_prompt"] == pytest.approx(np.quantile(finals, 0.95))  # higher is better
    with pytest.raises(GptParamsError, match="metric 'test_acc' is not one of task 'digits-mlp'"):
        export_meta(task, "test_acc", finals, every)


def test_edge_pooling_equals_pooling_the_projected_edges():
    """CNN conv2 weights are edges between two channel groups; pooling before the last affine map
    of ``edge_in`` must equal pooling its outputs (what the encoder computed before)."""
    from gpt_params.tokenizers import NeuronTokenizer

    task = get_task("mnist-cnn")
    tok = NeuronTokenizer(task.layout, task.symmetries, width=32)
    g = torch.Generator().manual_seed(0)
    start, noisy = (
        torch.randn(3, task.layout.numel, generator=g),
        torch.randn(3, task.layout.numel, generator=g),
    )
    full = tok.edge_in[0](tok._edge_inputs(0, start, noisy))  # (B, 16, 32, E)
    units = [
        tok.embed[k](torch.cat([start[:, tok._unit_index(k)], noisy[:, tok._unit_index(k)]], -1))
        + tok.layer_emb[k]
        for k in range(2)
    ]
    expected = torch.cat([units[0] + full.mean(2), units[1] + full.mean(1)], 1)
    torch.testing.assert_close(tok.encode(start, noisy)[:, :48], expected, rtol=1e-4, atol=1e-5)


def test_t_power_draws_timesteps_towards_high_noise():
    sched = train_scheduler(DiffusionConfig())
    seen: list[torch.Tensor] = []

    def recorder(noisy, t, start, m0, prompt, keep):  # a denoiser that records its timesteps
        seen.append(t)
        return start + 0 * noisy

    start, future = torch.zeros(4000, 3), torch.ones(4000, 3)
    m = torch.zeros(4000)

    def timesteps(power):
        seen.clear()
        diffusion_loss(
            recorder, sched, start, future, m, m, 0.0, torch.Generator().manual_seed(0), t_power=power
        )
        return seen[0].float()

    uniform, high = timesteps(1.0), timesteps(3.0)
    assert 0 <= high.min() and high.max() <= 999
    assert uniform.mean().item() == pytest.approx(499.5, abs=15)
    # density proportional to t^2: mean 3T/4, and P(t < T/2) = 1/8
    assert high.mean().item() == pytest.approx(750, abs=15)
    assert (high < 500).float().mean().item() == pytest.approx(0.125, abs=0.02)
    with pytest.raises(ValueError, match="t_power must be positive"):
        timesteps(0.0)


def test_cpu_attention_path_computes_what_fused_attention_does(monkeypatch):
    # on the CPU each block runs timm's explicit attention (faster there); the denoiser must not change
    task, model = make("mnist-mlp")
    randomise_heads(model)
    x = inputs(task)
    with torch.no_grad():
        explicit = model(*x)
    assert not any(b.attn.fused_attn for b in model.blocks)
    forward = type(model.blocks[0].attn).forward

    def fused(self, *args, **kwargs):
        self.fused_attn = True
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model.blocks[0].attn), "forward", fused)
    with torch.no_grad():
        reference = model(*x)
    assert model.blocks[0].attn.fused_attn
    assert not torch.equal(explicit, x[2])  # the blocks reach the output
    torch.testing.assert_close(explicit, reference, rtol=1e-4, atol=1e-5)


def test_preset_config_overrides_and_errors():
    cfg = preset_config("small", "role", width=128, depth=4, edge_width=16, size_embedding=True)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.edge_width) == (128, 4, PRESETS["small"].heads, 16)
    assert cfg.tokenizer == "role" and cfg.size_embedding
    assert preset_config("tiny") == PRESETS["tiny"]  # zeros and "" keep the preset's values
    for kwargs, message in [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"preset": "tiny", "tokenizer": "pixel"}, "tokenizer 'pixel'"),
        ({"preset": "tiny", "depth": -1}, "depth -1"),
        ({"preset": "tiny", "width": 50, "heads": 4}, "width 50 is not divisible by 4 heads"),
        ({"preset": "tiny", "colour": 1}, "unknown model fields ['colour']"),
        ({"preset": "tiny", "message_norm": "max"}, "message_norm 'max'; expected mean or sqrt"),
        ({"preset": "tiny", "edge_rank": -2}, "edge_rank -2; expected 0"),
    ]:
        with pytest.raises(GptParamsError, match=re.escape(message)):
            preset_config(**kwargs)

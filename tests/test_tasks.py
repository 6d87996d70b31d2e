import numpy as np
import pytest
import torch

from gpt_params.errors import DataError, TaskError
from gpt_params.tasks import get_task
from gpt_params.tasks.data import cifar10_from_arrays
from gpt_params.tasks.supervised import mlp_logits


def test_unknown_task_names_the_choices():
    with pytest.raises(TaskError, match="unknown task 'mnist-rnn'.*mnist-mlp"):
        get_task("mnist-rnn")


def test_mnist5k_split_sizes_and_normalisation():
    task = get_task("mnist-mlp")
    assert task.data.sizes() == {"train": 3500, "val": 500, "test": 1000}
    x = task.data.x["train"]
    assert x.shape[1:] == (1, 28, 28)
    # normalised with MNIST's mean/std: background pixels sit at -0.1307/0.3081
    assert torch.isclose(x.min(), torch.tensor(-0.1307 / 0.3081), atol=1e-4)
    assert set(task.data.y["test"].unique().tolist()) == set(range(10))


def test_mlp_fast_path_matches_vmapped_module():
    task = get_task("mnist-mlp")
    theta = torch.stack([task.flatten(task.build(s)) for s in range(4)])
    params = task.layout.unflatten(theta)
    x = task.data.x["val"][:50]
    reference = task.functional()(params, x).transpose(1, 2)  # (B, C, N)
    torch.testing.assert_close(mlp_logits(params, x, shared=True), reference, rtol=1e-4, atol=1e-5)
    per_net = x[None].expand(4, -1, -1, -1, -1)  # (B, N, 1, 28, 28)
    torch.testing.assert_close(mlp_logits(params, per_net, shared=False), reference, rtol=1e-4, atol=1e-5)


def test_batched_evaluation_matches_one_network_at_a_time():
    task = get_task("digits-mlp")
    theta = torch.stack([task.flatten(task.build(s)) for s in range(3)])
    batch = task.evaluate(theta)
    for b in range(3):
        net = task.to_module(theta[b])
        with torch.no_grad():
            logits = net(task.data.x["test"])
        loss = torch.nn.functional.cross_entropy(logits, task.data.y["test"]).item()
        err = (logits.argmax(1) != task.data.y["test"]).float().mean().item()
        assert batch["test_loss"][b] == pytest.approx(loss, rel=1e-5)
        assert batch["test_error"][b] == pytest.approx(err, abs=1e-6)


def test_cnn_evaluation_runs_on_injected_cifar_like_data():
    rng = np.random.default_rng(0)
    data = cifar10_from_arrays(
        rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 40),
        rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 10),
    )
    task = get_task("cifar10-cnn", data=data)
    assert task.data.sizes() == {"train": 36, "val": 4, "test": 10}
    theta = torch.stack([task.flatten(task.build(s)) for s in range(2)])
    m = task.evaluate(theta)
    assert set(m) == set(task.metric_names)
    assert all(np.isfinite(v).all() and v.shape == (2,) for v in m.values())


def test_cifar_without_data_dir_is_a_clear_error():
    with pytest.raises(DataError, match="--data-dir"):
        _ = get_task("cifar10-cnn").data


def test_cifar_arrays_of_the_wrong_shape_are_rejected():
    with pytest.raises(DataError, match=r"x_train has shape \(4, 28, 28\)"):
        cifar10_from_arrays(np.zeros((4, 28, 28)), np.zeros(4), np.zeros((2, 32, 32, 3)), np.zeros(2))


def test_full_mnist_loads_from_a_torchvision_layout_fixture(mnist_dir):
    task = get_task("mnist-mlp", data_dir=str(mnist_dir))
    assert task.data.sizes() == {"train": 220, "val": 20, "test": 60}
    m = task.evaluate(task.flatten(task.build(0))[None])
    assert np.isfinite(m["val_loss"]).all()


def test_missing_or_malformed_mnist_dir_is_a_clear_error(tmp_path, mnist_dir):
    with pytest.raises(DataError, match="does not exist"):
        _ = get_task("mnist-mlp", data_dir=str(tmp_path / "nope")).data
    with pytest.raises(DataError, match="could not read MNIST"):
        _ = get_task("mnist-mlp", data_dir=str(tmp_path / "MNIST")).data  # a dir without the raw files
    (mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="could not read MNIST"):
        _ = get_task("mnist-mlp", data_dir=str(mnist_dir)).data


# -- cartpole ----------------------------------------------------------------------------------


def test_actor_vector_follows_sb3_parameters_order():
    from stable_baselines3.common.utils import get_device  # noqa: F401  (SB3 importable)

    from gpt_params.recipes import PPORecipe
    from gpt_params.tasks.ppo import make_ppo

    task = get_task("cartpole")
    model = make_ppo(PPORecipe(n_envs=1, batch_size=32), seed=0)
    policy = model.policy
    full = policy.parameters_to_vector()  # SB3's own flattening of every policy parameter
    names = [n for n, _ in policy.named_parameters()]
    actor_pos = []
    offset = 0
    for n, p in policy.named_parameters():
        if n in task.layout.names:
            actor_pos.extend(range(offset, offset + p.numel()))
        offset += p.numel()
    assert [n for n in names if n in task.layout.names] == list(task.layout.names)
    theta = task.layout.flatten(policy.state_dict())
    np.testing.assert_array_equal(full[actor_pos], theta.numpy())
    # and the task's module computes SB3's action logits
    obs = torch.randn(6, 4)
    with torch.no_grad():
        sb3_logits = policy.get_distribution(obs).distribution.logits
        ours = torch.log_softmax(task.to_module(theta)(obs), -1)
    torch.testing.assert_close(ours, sb3_logits, rtol=1e-5, atol=1e-5)


def test_ppo_training_writes_no_log_folder(tmp_path, monkeypatch):
    """SB3's default logger makes a tempdir/SB3-<time> folder on every learn(); a harvest of 600 runs
    would leave 600 of them behind."""
    import tempfile

    from gpt_params.recipes import PPORecipe
    from gpt_params.tasks.ppo import make_ppo

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = make_ppo(PPORecipe(n_envs=1, n_steps=32, batch_size=32, n_epochs=1, total_timesteps=64), seed=0)
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64
    assert list(tmp_path.iterdir()) == []


def _sequential_return(task, theta, seed):
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    net, total, done = task.to_module(theta), 0.0, False
    while not done:
        with torch.no_grad():
            a = int(net(torch.as_tensor(obs)[None]).argmax())
        obs, r, term, trunc, _ = env.step(a)
        total += r
        done = term or trunc
    return total


def test_vectorised_rollouts_match_plain_gymnasium_episodes():
    from gpt_params.tasks.cartpole import EVAL_SEED

    task = get_task("cartpole", n_eval_episodes=3)
    theta = torch.stack([task.flatten(task.build(s)) for s in range(4)])
    returns = task.episode_returns(theta)  # (4, 3)
    for b in range(4):
        for e in range(3):
            assert returns[b, e] == _sequential_return(task, theta[b], EVAL_SEED + e)


def _controller(task, k_angle, k_rate, sharpness=1.0):
    """A linear controller pushing right when the pole falls right, as an actor vector."""
    net = task.build(0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        l0 = net.mlp_extractor.policy_net[0]
        l0.weight[0, 2], l0.weight[0, 3], l0.weight[0, 1] = k_angle, k_rate, 0.5
        net.mlp_extractor.policy_net[2].weight[0, 0] = 1.0
        net.action_net.weight[1, 0], net.action_net.weight[0, 0] = sharpness, -sharpness
    return task.flatten(net)


def test_known_good_controller_scores_high_and_a_bad_one_low():
    task = get_task("cartpole")
    good = _controller(task, 10.0, 2.0)
    bad = _controller(task, -10.0, -2.0)
    m = task.evaluate(torch.stack([good, bad]))
    assert m["return_mean"][0] >= 475
    assert m["return_mean"][1] <= 30


def test_sampled_returns_depend_on_the_policy_alone_and_follow_its_action_probabilities():
    task = get_task("cartpole", n_sampled_episodes=8)
    good = _controller(task, 10.0, 2.0, sharpness=50.0)
    theta = torch.stack(
        [good, _controller(task, 10.0, 2.0, sharpness=1e-3), *(task.flatten(task.build(s)) for s in range(3))]
    )
    both = task.sampled_returns(theta)  # (5, 8)
    assert np.array_equal(both[1:2], task.sampled_returns(theta[1:2]))  # common random numbers
    assert both[0].mean() >= 475  # near-deterministic logits: sampling changes nothing
    # logits near zero: a coin-flip policy falls within a few dozen steps
    assert both[1].mean() <= 60
    m = task.evaluate(theta[:2])
    assert np.allclose(m["return_sampled"], both[:2].mean(1))
    only = task.evaluate(theta[:2], metrics=("return_mean",))  # what LearnedOptimizer measures
    assert set(only) == {"return_mean", "return_std"} and np.array_equal(
        only["return_mean"], m["return_mean"]
    )


def test_evaluate_only_skips_the_work_of_metrics_not_asked_for(monkeypatch):
    digits = get_task("digits-mlp")
    theta = digits.unseen_inits(2)  # (2, D)
    full = digits.evaluate(theta)
    only = digits.evaluate_only(theta, ["val_error", "test_loss", "not_a_metric"])
    assert set(only) == {"val_error", "test_loss"}
    assert all(np.array_equal(only[m], full[m]) for m in only)
    cart = get_task("cartpole", n_sampled_episodes=4)
    theta = cart.unseen_inits(2)  # (2, D)
    want = cart.evaluate(theta)["return_sampled"]
    rollouts = cart.episode_returns

    def sampled_only(t, states=None, uniforms=None):
        assert uniforms is not None, "deterministic rollouts were run"
        return rollouts(t, states, uniforms)

    monkeypatch.setattr(cart, "episode_returns", sampled_only)
    only = cart.evaluate_only(theta, ["return_sampled"])
    assert list(only) == ["return_sampled"] and np.array_equal(only["return_sampled"], want)


def test_cartpole_held_out_episodes_are_not_the_zoos():
    task = get_task("cartpole")
    held = task.held_out(8)
    assert held.sampled_states.shape == (8, 4)
    assert not np.allclose(held.sampled_states, task.sampled_states[:8])
    theta = torch.stack([task.flatten(task.build(s)) for s in range(3)])
    returns = held.evaluate_only(theta, ("return_sampled",))["return_sampled"]
    assert returns.shape == (3,) and np.all((returns >= 1) & (returns <= 500))
    assert held.n_eval_episodes == task.n_eval_episodes  # the deterministic episodes stay the zoo's


@pytest.mark.parametrize("name", ["digits-mlp", "cartpole"])
def test_outputs_are_the_probe_outputs_and_differentiable(name):
    task = get_task(name)
    theta = task.unseen_inits(3).requires_grad_(True)  # (3, D)
    probes = torch.randn(5, 64) if name == "digits-mlp" else torch.randn(5, 4)
    out = task.outputs(theta, probes)  # (3, 5, O)
    torch.testing.assert_close(out.detach(), task.probe_outputs(theta.detach(), probes))
    (grad,) = torch.autograd.grad(out.square().sum(), theta)
    assert grad.shape == theta.shape and grad.abs().sum() > 0
    # each network's outputs depend on its own parameters only
    (g0,) = torch.autograd.grad(task.outputs(theta, probes)[0].sum(), theta)
    assert g0[1:].abs().sum() == 0 and g0[0].abs().sum() > 0


@pytest.mark.parametrize("task_name", ["mnist-cnn", "cifar10-cnn"])
@pytest.mark.parametrize("chunk", [1024, 40, 1])
def test_cnn_grouped_convolutions_match_the_vmapped_module(task_name, chunk, monkeypatch):
    import gpt_params.tasks.supervised as sup

    monkeypatch.setattr(sup, "CPU_CHUNK", chunk)  # 1024: all 5 nets at once; 40: 2 nets per call; 1: one
    g = torch.Generator().manual_seed(0)
    c = 1 if task_name == "mnist-cnn" else 3
    size = 28 if task_name == "mnist-cnn" else 32
    task = get_task(task_name, data=None)
    theta = torch.stack([task.flatten(task.build(s)) for s in range(5)])
    params = task.layout.unflatten(theta)
    x = torch.randn(20, c, size, size, generator=g)
    reference = task.functional()(params, x).transpose(1, 2)  # (B, C, N)
    torch.testing.assert_close(sup.cnn_logits(params, x, shared=True), reference, rtol=1e-4, atol=1e-5)
    per_net = torch.randn(5, 20, c, size, size, generator=g)
    reference = torch.stack([task.functional()(params, per_net[b])[b] for b in range(5)]).transpose(1, 2)
    torch.testing.assert_close(sup.cnn_logits(params, per_net, shared=False), reference, rtol=1e-4, atol=1e-5)


def test_two_layer_mlp_fast_path_matches_vmapped_module():
    task = get_task("mnist-mlp", hidden=(24, 12))
    theta = torch.stack([task.flatten(task.build(s)) for s in range(3)])
    params = task.layout.unflatten(theta)
    x = task.data.x["val"][:40]
    reference = task.functional()(params, x).transpose(1, 2)  # (B, C, N)
    torch.testing.assert_close(mlp_logits(params, x, shared=True), reference, rtol=1e-4, atol=1e-5)
    per_net = x[None].expand(3, -1, -1, -1, -1)
    torch.testing.assert_close(mlp_logits(params, per_net, shared=False), reference, rtol=1e-4, atol=1e-5)

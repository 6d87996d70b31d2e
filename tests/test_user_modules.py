"""Users' own networks: any module or state dict whose parameter tensors have the task's shapes in the
task's order is stepped, and comes back as the same kind, with the user's names."""

import pytest
import torch
from torch import nn

from gpt_params import LearnedOptimizer
from gpt_params.errors import GptParamsError

from .conftest import tiny_export


class Renamed(nn.Module):
    """A user's class: the task's tensors under other names (and another forward spelling)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.body = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.body:
            x = layer(x)
        return x


def sequential(task: str) -> nn.Sequential:
    """The task's architecture written as a plain ``nn.Sequential``."""
    if task == "mnist-mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.ReLU(), nn.Linear(10, 10))
    if task == "digits-mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    if task == "mnist-cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, bias=False), nn.ReLU(), nn.Conv2d(16, 32, 3, bias=False), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip
    assert task == "cartpole"  # SB3's actor: 4 -> 32 -> 32 -> 2, tanh
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 2))


METRICS = {
    "mnist-mlp": "val_loss",
    "digits-mlp": "val_loss",
    "mnist-cnn": "val_loss",
    "cartpole": "return_mean",
}


@pytest.fixture(scope="module", params=sorted(METRICS))
def opt(request, tmp_path_factory):
    task = request.param
    rng = [9.0, 500.0] if task == "cartpole" else [0.1, 2.5]
    exp = tiny_export(tmp_path_factory.mktemp(task), task, METRICS[task], rng, 0.5 * sum(rng), std=0.05)
    return LearnedOptimizer.from_pretrained(exp)


def step(opt, params):
    return opt.step(params, opt.best_prompt, current_loss=1.0, generator=torch.Generator().manual_seed(0))


def test_sequential_renamed_class_and_state_dict_step_like_the_tasks_own_module(opt):
    torch.manual_seed(3)
    seq = sequential(opt.task.name)
    theta = torch.cat([p.detach().reshape(-1) for p in seq.parameters()])  # (D,): the task's order
    reference = step(opt, theta)

    new_seq = step(opt, seq)
    assert type(new_seq) is nn.Sequential and new_seq is not seq
    assert [n for n, _ in new_seq.named_parameters()] == [n for n, _ in seq.named_parameters()]
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in new_seq.parameters()]), reference)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in seq.parameters()]), theta)  # untouched

    renamed = Renamed([m for m in seq if list(m.parameters())])
    new_renamed = step(opt, renamed)
    assert type(new_renamed) is Renamed
    names = [n for n, _ in new_renamed.named_parameters()]
    assert names[0].startswith("body.0.") and names == [n for n, _ in renamed.named_parameters()]
    torch.testing.assert_close(torch.cat([p.reshape(-1) for p in new_renamed.parameters()]), reference)

    new_state = step(opt, seq.state_dict())
    assert list(new_state) == list(seq.state_dict())
    seq.load_state_dict(new_state)  # loads into the user's class
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in seq.parameters()]), reference)

    own = opt.task.to_module(theta)
    torch.testing.assert_close(opt.task.flatten(step(opt, own)), reference)


def test_a_network_of_other_shapes_is_refused_naming_both_sides(opt):
    seq = sequential(opt.task.name)
    first = next(m for m in seq if list(m.parameters()))
    wider = {nn.Linear: lambda m: nn.Linear(m.in_features, 2 * m.out_features)}.get(
        type(first), lambda m: nn.Conv2d(m.in_channels, 2 * m.out_channels, 3, bias=False)
    )(first)
    bad = nn.Sequential(wider)
    got = ", ".join(f"{n} {tuple(p.shape)}" for n, p in bad.named_parameters())
    expected = opt.task.layout.describe_shapes()
    with pytest.raises(GptParamsError) as e:
        step(opt, bad)
    assert str(e.value) == f"expected the {opt.task.name} network ({expected}), got {got}"


def test_mnist_mlp_784_32_10_names_what_it_got(tmp_path):
    opt = LearnedOptimizer.from_pretrained(tiny_export(tmp_path, "mnist-mlp", "val_loss", [0.1, 2.5], 0.3))
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(
        GptParamsError, match=r"got 1.weight \(32, 784\), 1.bias \(32,\), 3.weight \(10, 32\)"
    ):
        step(opt, net)


def test_an_sb3_policy_steps_its_actor_and_keeps_its_value_network(tmp_path):
    from gpt_params.recipes import PPORecipe
    from gpt_params.tasks.ppo import make_ppo

    opt = LearnedOptimizer.from_pretrained(tiny_export(tmp_path, "cartpole", "return_mean", [9, 500], 480))
    policy = make_ppo(PPORecipe(n_envs=1, batch_size=32), seed=0).policy
    new = step(opt, policy)
    assert type(new) is type(policy) and new is not policy
    old, now = dict(policy.named_parameters()), dict(new.named_parameters())
    assert all(torch.equal(old[n], now[n]) for n in old if "value" in n)  # the critic side is untouched
    assert not torch.equal(old["action_net.weight"], now["action_net.weight"])
    torch.testing.assert_close(opt.task.layout.flatten(new), step(opt, opt.task.layout.flatten(policy)))


@pytest.mark.gpu
def test_a_step_on_cuda_keeps_the_callers_tensors_and_modules_there(tmp_path):
    exp = tiny_export(tmp_path, "digits-mlp", "val_loss", [0.1, 2.5], 0.3, std=0.05)
    cpu, gpu = LearnedOptimizer.from_pretrained(exp), LearnedOptimizer.from_pretrained(exp, device="cuda")
    theta = cpu.task.unseen_inits(3)
    kw = {"current_loss": 2.3, "generator": torch.Generator().manual_seed(0)}
    on_gpu = gpu.step(theta.cuda(), 0.5, **kw)
    assert on_gpu.device.type == "cuda"
    kw["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(on_gpu.cpu(), cpu.step(theta, 0.5, **kw), rtol=1e-3, atol=1e-3)
    net = sequential("digits-mlp").cuda()
    assert next(step(gpu, net).parameters()).device.type == "cuda"


def test_a_state_dict_with_sorted_names_is_put_back_in_module_order(opt):
    """safetensors files store names sorted (``2.bias`` before ``2.weight``, ``10.*`` before ``2.*``)."""
    torch.manual_seed(4)
    seq = sequential(opt.task.name)
    # 8 layers of padding put the layers at indices from 8 to 15, which a string sort misorders (10 < 8)
    padded = nn.Sequential(*[nn.Identity() for _ in range(8)], *seq)
    state = padded.state_dict()
    shuffled = {k: state[k] for k in sorted(state)}
    assert list(shuffled) != list(state)
    theta = torch.cat([p.detach().reshape(-1) for p in seq.parameters()])
    torch.testing.assert_close(opt.vectors(shuffled)[0], theta)

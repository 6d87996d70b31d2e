import pytest
import torch

from gpt_params.errors import LayoutError, TaskError
from gpt_params.layout import ParamLayout, permute, random_perms
from gpt_params.tasks import TASKS, get_task


@pytest.mark.parametrize("name", TASKS)
def test_module_vector_round_trip(name):
    task = get_task(name)
    net = task.build(3)
    theta = task.flatten(net)
    assert theta.shape == (task.layout.numel,)
    rebuilt = task.to_module(theta)
    for (n1, p1), (n2, p2) in zip(net.named_parameters(), rebuilt.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert torch.equal(task.layout.flatten(rebuilt.state_dict()), theta)


@pytest.mark.parametrize(
    "name,numel",
    [
        ("mnist-mlp", 7960),
        ("mnist-cnn", 5082),
        ("cifar10-cnn", 5370),
        ("digits-mlp", 1210),
        ("cartpole", 1282),
    ],
)
def test_parameter_counts_match_the_spec(name, numel):
    assert get_task(name).layout.numel == numel


def test_build_is_seeded():
    task = get_task("mnist-mlp")
    assert torch.equal(task.flatten(task.build(7)), task.flatten(task.build(7)))
    assert not torch.equal(task.flatten(task.build(7)), task.flatten(task.build(8)))


def _inputs(name):
    g = torch.Generator().manual_seed(0)
    return {
        "mnist-mlp": torch.randn(5, 1, 28, 28, generator=g),
        "mnist-cnn": torch.randn(5, 1, 28, 28, generator=g),
        "cifar10-cnn": torch.randn(5, 3, 32, 32, generator=g),
        "digits-mlp": torch.randn(5, 64, generator=g),
        "cartpole": torch.randn(5, 4, generator=g),
    }[name]


@pytest.mark.parametrize("name", TASKS)
def test_permuting_hidden_units_leaves_outputs_unchanged(name):
    task = get_task(name)
    theta = torch.stack([task.flatten(task.build(s)) for s in range(3)])  # (B, D)
    perms = random_perms(task.symmetries, 3, torch.Generator().manual_seed(1))
    permuted = permute(theta, task.layout, task.symmetries, perms)
    assert not torch.equal(permuted, theta)
    x = _inputs(name)
    for b in range(3):
        with torch.no_grad():
            out = task.to_module(theta[b])(x)
            out_p = task.to_module(permuted[b])(x)
        torch.testing.assert_close(out, out_p, rtol=1e-5, atol=1e-5)


def test_identity_permutation_is_a_no_op():
    task = get_task("cartpole")
    theta = task.flatten(task.build(0))[None]
    ident = [torch.arange(g.size)[None] for g in task.symmetries]
    assert torch.equal(permute(theta, task.layout, task.symmetries, ident), theta)


def test_layout_rejects_wrong_vectors_and_shapes():
    layout = get_task("digits-mlp").layout
    with pytest.raises(LayoutError, match="expected 1210"):
        layout.unflatten(torch.zeros(1209))
    with pytest.raises(LayoutError, match="missing"):
        layout.flatten({"fc1.weight": torch.zeros(16, 64)})
    bad = dict(zip(layout.names, [torch.zeros(s) for s in layout.shapes], strict=True))
    bad["fc2.bias"] = torch.zeros(11)
    with pytest.raises(LayoutError, match=r"fc2.bias.*\(11,\).*\(10,\)"):
        layout.flatten(bad)


def test_layout_json_round_trip():
    layout = get_task("mnist-cnn").layout
    assert ParamLayout.from_json(layout.to_json()) == layout


MEMBERS = [("mnist-mlp", (4,)), ("mnist-mlp", (32,)), ("mnist-mlp", (24, 12)), ("digits-mlp", (8, 5))]


@pytest.mark.parametrize("name,hidden", MEMBERS)
def test_mlp_family_members_round_trip_and_stay_permutation_invariant(name, hidden):
    task = get_task(name, hidden=hidden)
    n_in = 784 if name == "mnist-mlp" else 64
    widths = (n_in, *hidden, 10)
    assert task.layout.numel == sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=True))
    assert [g.size for g in task.symmetries] == list(hidden)
    assert task.options == {"hidden": list(hidden)}
    assert get_task(name, **task.options).layout == task.layout  # the stored options rebuild the member
    theta = torch.stack([task.flatten(task.build(s)) for s in range(3)])  # (B, D)
    assert torch.equal(task.flatten(task.to_module(theta[0])), theta[0])
    permuted = permute(
        theta, task.layout, task.symmetries, random_perms(task.symmetries, 3, torch.Generator())
    )
    x = _inputs(name)
    for b in range(3):
        with torch.no_grad():
            torch.testing.assert_close(task.to_module(theta[b])(x), task.to_module(permuted[b])(x))


def test_default_members_keep_their_names_and_layouts():
    for name, hidden in (("mnist-mlp", 10), ("digits-mlp", 16)):
        task = get_task(name)
        assert task.options == {} and task.label == name
        assert get_task(name, hidden=hidden).layout == task.layout
        assert get_task(name, hidden=[hidden]).options == {}
    assert get_task("mnist-mlp", hidden=(64, 32)).label == "mnist-mlp hidden=[64,32]"


@pytest.mark.parametrize("hidden", [0, 257, (), (8, 8, 8), (8, 0), 2.5, True])
def test_non_members_of_an_mlp_family_are_refused_by_name(hidden):
    with pytest.raises(
        TaskError, match=r"hidden=.* is not a member of the mnist-mlp family; expected one or two"
    ):
        get_task("mnist-mlp", hidden=hidden)


def test_fixed_architectures_take_no_member_options():
    with pytest.raises(TaskError, match="invalid options.*hidden.*mnist-cnn"):
        get_task("mnist-cnn", hidden=(8,))

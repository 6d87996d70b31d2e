"""Architecture families: one role-shared tokenizer for every member of the MLP families."""

import pytest
import torch

from gpt_params.errors import LayoutError
from gpt_params.layout import permute, random_perms, role_plan
from gpt_params.tasks import get_task
from gpt_params.tokenizers import RoleTokenizer

MEMBERS = [(4,), (10,), (33,), (24, 12), (5, 40)]


def plan_of(task):
    return role_plan(task.layout, task.symmetries, task.roles, task.family)


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    tok = RoleTokenizer(get_task("mnist-mlp").family, width=32, edge_width=8)
    for p in tok.parameters():  # the zero-initialised heads too, so decoding is not trivially zero
        torch.nn.init.normal_(p, std=0.05)
    return tok


@pytest.mark.parametrize("hidden", MEMBERS)
def test_one_tokenizer_serves_every_member_equivariantly(tokenizer, hidden):
    task = get_task("mnist-mlp", hidden=hidden)
    plan = plan_of(task)
    g = torch.Generator().manual_seed(1)
    start, noisy = torch.randn(2, 3, task.layout.numel, generator=g)  # (B, D) each
    tokens = tokenizer.encode(start, noisy, plan)
    assert tokens.shape == (3, sum(hidden) + 1, 32)  # one token per hidden unit, one for the output bias
    change = tokenizer.decode(tokens, start, noisy, plan)
    assert change.shape == start.shape and (change != 0).all()
    perms = random_perms(task.symmetries, 3, g)
    p_start, p_noisy = (permute(t, task.layout, task.symmetries, perms) for t in (start, noisy))
    p_change = tokenizer.decode(tokenizer.encode(p_start, p_noisy, plan), p_start, p_noisy, plan)
    torch.testing.assert_close(
        p_change, permute(change, task.layout, task.symmetries, perms), rtol=1e-4, atol=1e-5
    )


def test_plans_place_every_coordinate_by_role():
    task = get_task("mnist-mlp", hidden=(6, 3))
    plan = plan_of(task)
    names = list(task.family)
    for tensor, role in task.roles.items():
        assert (plan.role_id[task.layout.slice_of(tensor)] == names.index(role)).all()
    assert [r for r, _ in plan.units[0]] == ["in_weight", "in_bias"]
    assert [r for r, _ in plan.units[1]] == ["mid_bias", "out_weight"]
    assert [(r, a, b, tuple(i.shape)) for r, a, b, i in plan.edges] == [("mid_weight", 0, 1, (6, 3, 1))]
    covered = torch.cat(
        [i.reshape(-1) for parts in plan.units for _, i in parts]
        + [i.reshape(-1) for *_, i in plan.edges]
        + [i for _, i in plan.rest]
    )
    assert torch.equal(covered.sort().values, torch.arange(task.layout.numel))


def test_a_layout_outside_the_family_is_refused_by_tensor():
    task = get_task("mnist-mlp", hidden=(8,))
    digits = get_task("digits-mlp", hidden=(8,))
    with pytest.raises(LayoutError, match=r"'fc1.weight' \(in_weight\) gives 64 values.*in_weight has 784"):
        role_plan(digits.layout, digits.symmetries, digits.roles, task.family)
    with pytest.raises(LayoutError, match="'fc1.bias' has no role"):
        role_plan(task.layout, task.symmetries, {"fc1.weight": "in_weight"}, task.family)


def test_role_normaliser_puts_narrow_and_wide_members_on_one_scale():
    from gpt_params.normalize import RoleNormalizer

    family = get_task("mnist-mlp").family
    members = []
    for hidden in [(4,), (64,), (16, 8)]:
        task = get_task("mnist-mlp", hidden=hidden)
        theta = torch.stack([task.flatten(task.build(s)) for s in range(20)]).numpy()  # default inits
        members.append((theta, task.layout, task.roles, task.fan_in))
    norm = RoleNormalizer.fit(tuple(family), members)
    for hidden in [(4,), (200,), (3, 100)]:  # widths it never saw
        task = get_task("mnist-mlp", hidden=hidden)
        z = norm.for_member(task.layout, task.roles, task.fan_in).normalize(
            torch.stack([task.flatten(task.build(s)) for s in range(20)])
        )
        for name in task.layout.names:  # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) inits: unit variance per role
            assert 0.7 < z[:, task.layout.slice_of(name)].std() < 1.4, (hidden, name)


def test_a_family_model_predicts_for_any_member_and_stays_equivariant():
    from gpt_params.model import PRESETS, ParamDiffusionTransformer

    cfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "tokenizer": "role"})
    torch.manual_seed(0)
    model = ParamDiffusionTransformer(None, (), cfg, family=get_task("mnist-mlp").family).eval()
    for p in model.parameters():  # leave the zero init, which returns theta_start for every member
        torch.nn.init.normal_(p, std=0.02)
    g = torch.Generator().manual_seed(0)
    for hidden in [(4,), (17,), (9, 6)]:
        task = get_task("mnist-mlp", hidden=hidden)
        plan = plan_of(task)
        noisy, start = torch.randn(2, 2, task.layout.numel, generator=g)
        t, metric, prompt = torch.tensor([10, 700]), torch.zeros(2), torch.ones(2)
        with torch.no_grad():
            out = model(noisy, t, start, metric, prompt, plan=plan)
            perms = random_perms(task.symmetries, 2, g)
            p_noisy, p_start, p_out = (
                permute(v, task.layout, task.symmetries, perms) for v in (noisy, start, out)
            )
            out_p = model(p_noisy, t, p_start, metric, prompt, plan=plan)
        assert out.shape == start.shape
        torch.testing.assert_close(out_p, p_out, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="plan="):
        model(noisy, t, start, metric, prompt)

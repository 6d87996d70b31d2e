"""Architecture families: one role-shared tokenizer for every member of the MLP families."""

import copy

import pytest
import torch

from gpt_params.errors import GptParamsError, LayoutError
from gpt_params.layout import permute, random_perms, role_plan
from gpt_params.tasks import get_task
from gpt_params.tokenizers import RoleTokenizer

from .conftest import harvest_mixed

MEMBERS = [(4,), (10,), (33,), (24, 12), (5, 40)]


def plan_of(task):
    return role_plan(task.layout, task.symmetries, task.roles, task.family)


@pytest.fixture(
    scope="module",
    params=[(False, "mean"), (True, "mean"), (True, "sqrt")],
    ids=["pooled", "messages", "sqrt"],
)
def tokenizer(request):
    torch.manual_seed(0)
    messages, norm = request.param
    tok = RoleTokenizer(
        get_task("mnist-mlp").family, width=32, edge_width=8, messages=messages, message_norm=norm
    )
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


def test_edge_messages_tell_first_layer_units_what_the_units_they_feed_do(tokenizer):
    """A first-layer unit's token sees the second layer's output weights only through edge messages."""
    task = get_task("mnist-mlp", hidden=(5, 3))
    plan = plan_of(task)
    g = torch.Generator().manual_seed(3)
    start, noisy = torch.randn(2, 2, task.layout.numel, generator=g)  # (B, D) each
    out_w = task.layout.slice_of("fc3.weight")
    other_start, other_noisy = start.clone(), noisy.clone()
    other_start[:, out_w], other_noisy[:, out_w] = -start[:, out_w], -noisy[:, out_w]
    first = tokenizer.encode(start, noisy, plan)[:, :5]  # (B, 5, E): the first hidden layer's units
    other = tokenizer.encode(other_start, other_noisy, plan)[:, :5]
    assert torch.equal(first, other) != tokenizer.messages


def message_to_first_layer(tok: RoleTokenizer, hidden: tuple[int, int], start, noisy) -> torch.Tensor:
    """What the edge messages add to the first hidden layer's tokens ``(B, n_1, E)``."""
    plan = plan_of(get_task("mnist-mlp", hidden=hidden))
    silent = copy.deepcopy(tok)  # values v = 0: no message beyond msg_out's bias
    for p in silent.msg_v.parameters():
        torch.nn.init.zeros_(p)
    return (tok.encode(start, noisy, plan) - silent.encode(start, noisy, plan))[:, : hidden[0]]


@pytest.mark.parametrize("norm", ["mean", "sqrt"])
def test_sqrt_messages_keep_one_scale_across_widths_and_carry_no_common_part(norm):
    torch.manual_seed(0)
    tok = RoleTokenizer(
        get_task("mnist-mlp").family, width=32, edge_width=8, messages=True, message_norm=norm
    )
    for p in tok.parameters():
        torch.nn.init.normal_(p, std=0.1)
    scale = {}
    for n in (4, 256):
        numel = get_task("mnist-mlp", hidden=(6, n)).layout.numel
        start, noisy = torch.randn(2, 8, numel, generator=torch.Generator().manual_seed(n))  # (B, D) each
        with torch.no_grad():
            scale[n] = float(message_to_first_layer(tok, (6, n), start, noisy).pow(2).mean().sqrt())
    ratio = scale[256] / scale[4]  # random-sign sums over n units: sqrt keeps their scale, mean shrinks it
    assert 0.6 < ratio < 1.7 if norm == "sqrt" else ratio < 0.5  # measured: 1.17 and 0.34
    task = get_task("mnist-mlp", hidden=(6, 5))
    start, noisy = torch.randn(2, 2, task.layout.numel, generator=torch.Generator().manual_seed(1))
    for t in (start, noisy):  # every second-layer unit alike: a centred message has nothing to say
        for name, axis in (("fc2.weight", 1), ("fc2.bias", 1), ("fc3.weight", 2)):  # the units' axis
            v = task.layout.unflatten(t)[name]  # (B, *shape), a view into t
            v.copy_(v.narrow(axis, 0, 1).expand_as(v))
    with torch.no_grad():
        silent = message_to_first_layer(tok, (6, 5), start, noisy).abs().max()
    assert (silent < 1e-5) == (norm == "sqrt")


def test_the_bilinear_edge_term_starts_at_zero_and_adds_a_rank_k_change_between_layers():
    """``edge_rank`` K adds ``sum_k p_k(a) q_k(b)`` to the weights between the hidden layers: zero at init
    (the model starts as the identity), and with the additive head silenced the change is of rank K."""
    task = get_task("mnist-mlp", hidden=(9, 7))
    plan = plan_of(task)
    tok = RoleTokenizer(task.family, width=32, edge_width=8, edge_rank=2)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(3, sum(plan.sizes) + len(plan.rest), 32, generator=g)  # (B, T, E) tokens
    start, noisy = torch.randn(2, 3, task.layout.numel, generator=g)
    ((role, _, _, idx),) = plan.edges
    assert torch.count_nonzero(tok.decode(h, start, noisy, plan)[:, idx]) == 0  # p's zero init
    with torch.no_grad():
        torch.nn.init.normal_(tok.edge_p[role].weight, generator=g)
        for head in (tok.edge_out[role].weight, tok.edge_out[role].bias):
            head.zero_()
    change = tok.decode(h, start, noisy, plan)[:, idx][..., 0]  # (B, 9, 7)
    assert torch.linalg.matrix_rank(change).tolist() == [2, 2, 2]


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


def test_role_normaliser_width_law_follows_a_std_that_scales_with_the_width():
    from gpt_params.normalize import RoleNormalizer

    family = get_task("mnist-mlp").family

    def checkpoints(hidden):  # default inits whose first-layer weights scale as width ** -0.5, as if trained
        task = get_task("mnist-mlp", hidden=hidden)
        theta = torch.stack([task.flatten(task.build(s)) for s in range(12)])
        theta[:, task.layout.slice_of("fc1.weight")] *= (hidden[0] / 16) ** -0.5
        return task, theta

    members = [checkpoints(h) for h in [(4,), (16,), (64,), (8, 8)]]
    fitted = [(theta.numpy(), t.layout, t.roles, t.fan_in) for t, theta in members]
    plain, law = (
        RoleNormalizer.fit(tuple(family), fitted),
        RoleNormalizer.fit(tuple(family), fitted, width_law=True),
    )
    in_w = tuple(family).index("in_weight")
    assert law.exponent[in_w, 1] == pytest.approx(-0.5, abs=0.05)  # fan-out: the first hidden width
    assert law.exponent[in_w, 0] == 0  # every member has 784 inputs: no slope to fit
    for hidden in [(4,), (100,)]:  # 100: a width it never saw
        task, theta = checkpoints(hidden)
        std = {
            name: norm.for_member(task.layout, task.roles, task.fan_in)
            .normalize(theta)[:, task.layout.slice_of("fc1.weight")]
            .std()
            for name, norm in (("plain", plain), ("law", law))
        }
        assert 0.85 < std["law"] < 1.15, (hidden, std)
        assert not 0.85 < std["plain"] < 1.15, (hidden, std)  # one std per role misses both ends

    restored = RoleNormalizer.from_state(tuple(family), law.state())
    assert torch.equal(restored.exponent, law.exponent) and torch.equal(restored.log_fan_ref, law.log_fan_ref)
    old = RoleNormalizer.from_state(
        tuple(family), plain.state()
    )  # exports from before the law load unchanged
    assert old.exponent is None and set(plain.state()) == {"role_normalizer.mean", "role_normalizer.std"}


def random_family_model(size_embedding: bool, std: float = 0.02, **fields):
    from gpt_params.model import ParamDiffusionTransformer, preset_config

    cfg = preset_config("tiny", "role", size_embedding=size_embedding, **fields)
    torch.manual_seed(0)
    model = ParamDiffusionTransformer(None, (), cfg, family=get_task("mnist-mlp").family).eval()
    for p in model.parameters():  # leave the zero init, which returns theta_start for every member
        torch.nn.init.normal_(p, std=std)
    return model


@pytest.mark.parametrize(
    "size_embedding, fields",
    [
        (False, {}),
        (True, {}),
        (True, {"edge_messages": True}),
        (True, {"edge_messages": True, "message_norm": "sqrt"}),
        (True, {"edge_messages": True, "message_norm": "sqrt", "block_messages": True}),
        (True, {"edge_messages": True, "message_norm": "sqrt", "block_messages": True, "edge_rank": 4}),
    ],
    ids=["plain", "size", "messages", "sqrt", "block-messages", "bilinear"],
)
def test_a_family_model_predicts_for_any_member_and_stays_equivariant(size_embedding, fields):
    model = random_family_model(size_embedding, **fields)
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


def test_block_messages_reach_only_unit_tokens_and_equal_the_dense_formula():
    """EdgeMessages computes messages on the hidden units' tokens alone and gives every other token (and, with
    one hidden layer, every token) out()'s bias, as running out() on a zero message would."""
    from gpt_params.model import EdgeMessages
    from gpt_params.tokenizers import edge_messages

    torch.manual_seed(0)
    block = EdgeMessages(16, 4)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)

    def dense(x, c, edges, sizes):  # messages computed for every token, zeros where none arrive
        h = block.v(block.norm(x))  # (B, T, 2W)
        msg = torch.zeros(x.shape[0], x.shape[1], 4)
        starts = [0, sizes[0]]
        for ga, gb, e in edges:
            va = h[:, starts[ga] : starts[ga] + sizes[ga], :4]
            vb = h[:, starts[gb] : starts[gb] + sizes[gb], 4:]
            to_a, to_b = edge_messages(e, va, vb, "sqrt")
            msg[:, starts[ga] : starts[ga] + sizes[ga]] += to_a
            msg[:, starts[gb] : starts[gb] + sizes[gb]] += to_b
        return x + block.gate(c)[:, None] * block.out(msg)

    c = torch.randn(3, 16)
    for sizes, edges in [([5], []), ([5, 3], [(0, 1, torch.randn(3, 5, 3, 4))])]:
        x = torch.randn(3, sum(sizes) + 2, 16)  # the hidden units' tokens, then two rest tokens
        with torch.no_grad():
            torch.testing.assert_close(block(x, c, edges, sizes), dense(x, c, edges, sizes))


def test_a_probe_gradient_model_is_equivariant_and_reads_each_roles_direction_not_its_scale():
    fields = {"edge_messages": True, "message_norm": "sqrt", "block_messages": True, "edge_rank": 4}
    model = random_family_model(True, grad_probes=8, **fields)
    g = torch.Generator().manual_seed(3)
    t, metric, prompt = torch.tensor([10, 700]), torch.zeros(2), torch.ones(2)
    for hidden in [(5,), (9, 6)]:
        task = get_task("mnist-mlp", hidden=hidden)
        plan = plan_of(task)
        noisy, start, grad = torch.randn(3, 2, task.layout.numel, generator=g)
        with torch.no_grad():
            out = model(noisy, t, start, metric, prompt, plan=plan, theta_grad=grad)
            perms = random_perms(task.symmetries, 2, g)
            p_noisy, p_start, p_grad, p_out = (
                permute(v, task.layout, task.symmetries, perms) for v in (noisy, start, grad, out)
            )
            out_p = model(p_noisy, t, p_start, metric, prompt, plan=plan, theta_grad=p_grad)
            # each role of each network rescaled by its own positive factor: the same prediction
            scales = torch.rand(2, len(task.family), generator=g) * 100 + 0.01  # (B, roles)
            out_s = model(
                noisy, t, start, metric, prompt, plan=plan, theta_grad=grad * scales[:, plan.role_id]
            )
            out_other = model(noisy, t, start, metric, prompt, plan=plan, theta_grad=-grad)
        torch.testing.assert_close(out_p, p_out, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out_s, out, rtol=1e-4, atol=1e-4)
        assert (out_other - out).abs().max() > 1e-3  # the direction is read
    with pytest.raises(ValueError, match="theta_grad="):
        model(noisy, t, start, metric, prompt, plan=plan)
    with pytest.raises(ValueError, match="without grad_probes"):
        random_family_model(True)(noisy, t, start, metric, prompt, plan=plan, theta_grad=grad)


@pytest.mark.parametrize("hidden", [(6,), (5, 3)])
def test_probe_gradient_is_the_mean_cross_entropy_gradient_on_fixed_train_examples(hidden):
    task = get_task("digits-mlp", hidden=hidden)
    theta = torch.stack([task.flatten(task.build(s)) for s in (0, 1)])  # (2, D)
    grad = task.probe_gradient(theta, 50, seed=4)
    x, y = task.data.x["train"], task.data.y["train"]
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(4))[:50]
    for b in range(2):
        net = task.to_module(theta[b])
        torch.nn.functional.cross_entropy(net(x[pick]), y[pick]).backward()
        want = torch.cat([p.grad.flatten() for p in net.parameters()])
        torch.testing.assert_close(grad[b], want, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(grad, task.probe_gradient(theta, 50, seed=5))  # other examples
    with pytest.raises(ValueError, match="probe examples"):
        task.probe_gradient(theta, 10**6)


def test_the_size_embedding_tells_a_layer_of_repeated_units_from_the_original():
    """Attention averages over a layer's unit tokens: a width-8 layer that repeats each unit of a width-4
    one changes only the units' share of attention against the output-bias token. The size embedding
    tells the model the width outright."""
    narrow, wide = get_task("mnist-mlp", hidden=(4,)), get_task("mnist-mlp", hidden=(8,))
    g = torch.Generator().manual_seed(2)
    noisy, start = torch.randn(2, 2, narrow.layout.numel, generator=g)  # (B, D) each, normalised

    def repeated(theta: torch.Tensor) -> torch.Tensor:  # (B, D narrow) -> (B, D wide): units 0-3, 0-3
        p = narrow.layout.unflatten(theta)
        parts = [p["fc1.weight"].repeat(1, 2, 1), p["fc1.bias"].repeat(1, 2), p["fc2.weight"].repeat(1, 1, 2)]
        return torch.cat([v.flatten(1) for v in [*parts, p["fc2.bias"]]], 1)  # in wide.layout's order

    t, metric, prompt = torch.tensor([10, 700]), torch.zeros(2), torch.ones(2)
    gaps = []
    for size_embedding in (False, True):
        model = random_family_model(size_embedding, std=0.1)
        with torch.no_grad():
            out = repeated(model(noisy, t, start, metric, prompt, plan=plan_of(narrow)))
            out_wide = model(repeated(noisy), t, repeated(start), metric, prompt, plan=plan_of(wide))
        gaps.append(((out_wide - out).abs().max() / out.abs().max()).item())
    assert gaps[1] > 3 * gaps[0], gaps  # about 1% of the output without, 5% with (random weights)


def _cohort(cohort_id, task, runs, k=3, seed=0):
    import numpy as np

    from gpt_params.zoo import Cohort

    g = np.random.default_rng(seed)
    ids = np.arange(cohort_id * 10, cohort_id * 10 + runs)
    return Cohort(
        cohort_id=cohort_id,
        run_id=ids,
        seed=ids,
        split=(ids % 3).astype(np.uint8),
        hparams=["{}"] * runs,
        step=np.tile(np.arange(k), (runs, 1)),
        params=g.standard_normal((runs, k, task.layout.numel)).astype(np.float32),
        metrics={m: g.random((runs, k)).astype(np.float32) for m in task.metric_names},
    )


def test_a_mixed_zoo_groups_runs_by_member_and_merges(tmp_path):
    import numpy as np

    from gpt_params.errors import ZooError
    from gpt_params.zoo import ZooWriter, member_attrs, merge, zoo_attrs
    from gpt_params.zoo_reader import Zoo

    members = [get_task("digits-mlp", hidden=h) for h in [(4,), (6, 3), (4,)]]
    attrs = zoo_attrs("digits-mlp", None, members[0].metric_names, {"runs": 7})
    shards = []
    for shard, cohorts in enumerate([[0, 2], [1]]):
        w = ZooWriter(tmp_path / f"z{shard}.h5", attrs)
        for c in cohorts:
            with pytest.raises(ZooError, match="name their member"):
                w.commit(_cohort(c, members[c], runs=2 + c))
            w.commit(
                _cohort(c, members[c], runs=2 + c, seed=c),
                member_attrs(members[c].layout, members[c].options),
            )
        shards.append(tmp_path / f"z{shard}.h5")
    for path in [shards[0], tmp_path / "virtual.h5", tmp_path / "merged.h5"]:
        if path.name == "virtual.h5":
            merge(shards, path, virtual=True)
        elif path.name == "merged.h5":
            merge(shards, path)
        zoo = Zoo(path)
        assert zoo.mixed and zoo.label.startswith("digits-mlp family")
        with pytest.raises(ZooError, match=r"holds \d architectures of digits-mlp"):
            zoo.layout  # noqa: B018
        for row in range(zoo.n_runs):
            cohort = int(zoo.run_id[row]) // 10
            task = members[cohort]
            assert zoo.layout_of(row) == task.layout and zoo.options_of(row) == task.options
            expected = _cohort(cohort, task, runs=2 + cohort, seed=cohort).params[int(zoo.run_id[row]) % 10]
            np.testing.assert_array_equal(zoo.params(row), expected)
            assert zoo.make_task(member=int(zoo.member[row])).layout == task.layout
        sizes = [len(zoo.runs_of_member(m)) for m in range(len(zoo.members))]
        assert sizes == ([2 + 4] if path == shards[0] else [2 + 4, 3])  # (4,) in cohorts 0 and 2; (6, 3) in 1
    assert Zoo(tmp_path / "merged.h5").n_runs == 2 + 3 + 4


def test_a_commit_reads_only_its_own_part_and_the_index_matches_one_built_from_scratch(tmp_path, monkeypatch):
    import h5py
    import numpy as np

    from gpt_params import zoo as zoo_mod
    from gpt_params.zoo import ZooWriter, member_attrs, write_index, zoo_attrs

    members = [get_task("digits-mlp", hidden=h) for h in [(4,), (6, 3), (4,), (5,), (6, 3)]]
    attrs = zoo_attrs("digits-mlp", None, members[0].metric_names, {"runs": 5})
    reads = []
    summarize = zoo_mod._summarize
    monkeypatch.setattr(zoo_mod, "_summarize", lambda path, a: reads.append(path.name) or summarize(path, a))
    w = ZooWriter(tmp_path / "z.h5", attrs)
    for c, task in enumerate(members):  # every commit rewrites the index over all parts so far
        w.commit(_cohort(c, task, runs=2, seed=c), member_attrs(task.layout, task.options))
        assert reads[-1] == f"cohort-{c:06d}.h5" and len(reads) == c + 1  # but reads only the new part
    w.rebuild_index()
    assert len(reads) == len(members)
    # a part replaced in place (a relabel rewrites parts) is read again
    part = tmp_path / "z.h5.parts" / "cohort-000001.h5"
    with h5py.File(part, "a") as f:
        f["metrics/val_loss"][...] = 7.0
    w.rebuild_index()
    assert reads[-1] == part.name and len(reads) == len(members) + 1
    write_index(tmp_path / "scratch.h5", w._part_files(), attrs, rel_to=tmp_path)
    with h5py.File(tmp_path / "z.h5", "r") as a, h5py.File(tmp_path / "scratch.h5", "r") as b:
        names, have = [], []
        b.visit(names.append)
        a.visit(have.append)
        assert sorted(names) == sorted(have)
        for n in names:
            if isinstance(b[n], h5py.Dataset):
                np.testing.assert_array_equal(a[n][()], b[n][()], err_msg=n)
        assert (a["metrics/val_loss"][()] == 7.0).sum() == 2 * 3  # cohort 1's two runs, three checkpoints


def test_mixed_harvest_draws_members_per_cohort_and_never_a_held_out_one(tmp_path):
    import numpy as np

    from gpt_params.tasks.supervised import HELD_OUT_SHAPES, HELD_OUT_WIDTHS, draw_mlp_member
    from gpt_params.zoo_reader import Zoo

    draws = [draw_mlp_member(np.random.default_rng([0, i])) for i in range(2000)]
    assert {len(h) for h in draws} == {1, 2}
    assert min(min(h) for h in draws) >= 4 and max(max(h) for h in draws) <= 256
    assert not any(h[0] in HELD_OUT_WIDTHS for h in draws if len(h) == 1)
    assert not any(h in HELD_OUT_SHAPES for h in draws)

    path = harvest_mixed(tmp_path / "mixed.h5", runs=6, ckpts_per_run=3, cohort_size=2)
    zoo = Zoo(path)
    assert zoo.mixed and zoo.n_runs == 6 and len(zoo.members) == 3  # three cohorts, three members
    for row in range(zoo.n_runs):
        task = zoo.make_task(member=int(zoo.member[row]))
        assert zoo.params(row).shape == (3, task.layout.numel)
        theta = torch.from_numpy(zoo.checkpoint(row, 2))[None]
        assert np.isclose(task.evaluate(theta)["val_loss"][0], zoo.metrics["val_loss"][row, 2], rtol=1e-4)
    harvest_mixed(path, runs=6, ckpts_per_run=3, cohort_size=2)  # a rerun resumes: nothing to add
    assert Zoo(path).n_runs == 6


def test_width_power_draws_narrow_members_more_often_and_is_stored_only_when_set(tmp_path):
    import numpy as np

    from gpt_params.harvest import HarvestConfig
    from gpt_params.tasks.supervised import HELD_OUT_WIDTHS, MIXED_WIDTHS, draw_mlp_member
    from gpt_params.zoo_reader import Zoo

    def widths(power):
        draws = [draw_mlp_member(np.random.default_rng([1, i]), power) for i in range(4000)]
        return np.array([w for h in draws for w in h])

    low, high = MIXED_WIDTHS
    for power in (1.0, 1.5, 2.0):  # density w^-power: the median against its inverse CDF's
        w = widths(power)
        assert w.min() >= low and w.max() <= high
        a = 1.0 - power
        median = np.sqrt(low * high) if power == 1 else ((low**a + high**a) / 2) ** (1 / a)
        assert abs(np.median(w) - median) <= 0.1 * median + 1, (power, np.median(w), median)
    assert np.mean(widths(1.5) <= 16) > 1.5 * np.mean(widths(1.0) <= 16)
    narrow = [draw_mlp_member(np.random.default_rng(i), 2.0) for i in range(500)]
    assert not any(h[0] in HELD_OUT_WIDTHS for h in narrow if len(h) == 1)

    kw = dict(task="digits-mlp", runs=4, cohort_size=2, out=str(tmp_path / "z.h5"))
    # older zoos stored no width_power: a default rerun must still resume them
    assert "width_power" not in HarvestConfig(architectures="mixed", **kw).stored()
    with pytest.raises(GptParamsError, match="--width-power 1.5 shapes --architectures mixed"):
        HarvestConfig(width_power=1.5, **kw)
    with pytest.raises(GptParamsError, match="--width-power must lie in \\[0, 4\\], got -1"):
        HarvestConfig(architectures="mixed", width_power=-1, **kw)
    path = harvest_mixed(tmp_path / "narrow.h5", runs=4, ckpts_per_run=2, cohort_size=2, width_power=2.0)
    zoo = Zoo(path)
    assert zoo.harvest_config["width_power"] == 2.0
    draws = [draw_mlp_member(np.random.default_rng([0, 0xA7C, c]), 2.0) for c in range(2)]
    assert sorted(tuple(o["hidden"]) for o in zoo.member_options) == sorted(set(draws))


def test_zoo_info_reports_a_mixed_zoo_per_architecture(tmp_path, capsys):
    from gpt_params.cli import main

    out = harvest_mixed(tmp_path / "mixed.h5", runs=4, ckpts_per_run=2, cohort_size=2)
    assert main(["zoo", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "task digits-mlp family (2 architectures), 2 checkpoints per run" in text and "final val_loss" in text
    )
    rows = [line for line in text.splitlines() if line.startswith("digits-mlp hidden=")]
    assert len(rows) == 2 and all(sum(map(int, r.split()[3:6])) == 2 for r in rows)  # train + val + test runs


def test_member_pairs_come_from_one_member_per_batch_and_resume_exactly(tmp_path):
    import itertools

    import numpy as np

    from gpt_params.normalize import RoleNormalizer
    from gpt_params.pairs import MemberPairStream, PairConfig
    from gpt_params.zoo_reader import Zoo

    path = harvest_mixed(
        tmp_path / "mixed.h5", runs=9, ckpts_per_run=3, cohort_size=3, val_frac=0, test_frac=0
    )
    zoo = Zoo(path)
    tasks = {m: zoo.make_task(member=m) for m in range(len(zoo.members))}
    roles = tuple(tasks[0].family)
    norm = RoleNormalizer.fit(
        roles,
        [
            (zoo.params(int(r)), t.layout, t.roles, t.fan_in)
            for m, t in tasks.items()
            for r in zoo.runs_of_member(m)
        ],
    )

    def stream(start, **kw):
        return MemberPairStream(
            str(path), {m: zoo.runs_of_member(m, "train") for m in tasks}, 5, PairConfig(),
            {m: norm.for_member(t.layout, t.roles, t.fan_in) for m, t in tasks.items()},
            {m: t.layout for m, t in tasks.items()}, {m: t.symmetries for m, t in tasks.items()},
            "digits-mlp", seed=3, start_step=start, runs_per_step=2, **kw,
        )  # fmt: skip

    batches = list(itertools.islice(iter(stream(0)), 12))
    assert len({int(b["member"]) for b in batches}) > 1
    for b in batches:
        d = tasks[int(b["member"])].layout.numel
        assert b["theta_start"].shape == b["theta_future"].shape == (5, d)
    for x, y in zip(batches[7:], itertools.islice(iter(stream(7)), 5), strict=True):
        assert int(x["member"]) == int(y["member"])
        np.testing.assert_array_equal(x["theta_future"].numpy(), y["theta_future"].numpy())

    # the stream reads only the checkpoints its pairs use, and gives what drawing from whole runs gives
    from gpt_params.pairs import _rng, draw_pairs

    ref = stream(0)
    wide = stream(0, pairs_per_run=1)  # a run per pair: 5 runs where the member has them
    assert all(ref.runs_of(m) == min(2, len(ref.rows[m])) for m in tasks)  # 5 pairs: runs_per_step
    assert all(wide.runs_of(m) == min(5, len(wide.rows[m])) for m in tasks)
    assert any(wide.runs_of(m) > 2 for m in tasks)
    for st, drawn in ((ref, batches), (wide, list(itertools.islice(iter(wide), 12)))):
        for step, b in enumerate(drawn):
            m = st.member_at(step)
            g = _rng(st.seed, 6, step)
            runs = np.sort(g.choice(st.rows[m], st.runs_of(m), replace=False))
            whole = draw_pairs(
                g, np.stack([zoo.params(int(r)) for r in runs]), zoo.metrics["val_loss"][runs], st.batch_of(m),
                st.cfg, st.normalizers[m], st.layouts[m], st.groups[m], st._task,
            )  # fmt: skip
            for key, value in whole.items():
                np.testing.assert_array_equal(b[key].numpy(), value.numpy())
    with pytest.raises(ValueError, match="pairs_per_run 0"):
        stream(0, pairs_per_run=0)
    row = int(zoo.runs_of_member(0)[0])
    for ks in ([0], [0, 2], [0, 1, 2]):
        np.testing.assert_array_equal(zoo.checkpoints(row, np.array(ks)), zoo.params(row)[ks])

    # a parameter budget gives wider members fewer pairs, never fewer than min_batch
    sizes = {m: t.layout.numel for m, t in tasks.items()}
    small, large = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
    capped = stream(0, batch_params=5 * sizes[small], min_batch=2)
    assert capped.batch_of(small) == 5 and capped.batch_of(large) == max(2, 5 * sizes[small] // sizes[large])
    for b in itertools.islice(iter(capped), 12):
        assert len(b["theta_start"]) == capped.batch_of(int(b["member"]))

    # a hidden-unit budget gives members with more units fewer pairs; the tighter cap wins
    units = {m: sum(g.size for g in t.symmetries) for m, t in tasks.items()}
    few, many = min(units, key=units.get), max(units, key=units.get)
    assert units[few] < units[many]
    by_units = stream(0, batch_units=4 * units[many], min_batch=1)
    assert by_units.batch_of(many) == 4 and by_units.batch_of(few) == min(5, 4 * units[many] // units[few])
    both = stream(0, batch_units=4 * units[many], batch_params=3 * sizes[many], min_batch=1)
    assert both.batch_of(many) == 3
    for b in itertools.islice(iter(by_units), 12):
        assert len(b["theta_start"]) == by_units.batch_of(int(b["member"]))

    # member_power: draws per run fall with a member's hidden units as units^-power
    runs = {m: len(zoo.runs_of_member(m, "train")) for m in tasks}
    plain, tilted = stream(0), stream(0, member_power=1.0)
    per_run = {
        m: (tilted.p[i] / runs[m], plain.p[i] / runs[m]) for i, m in enumerate(int(m) for m in tilted.members)
    }
    np.testing.assert_allclose(per_run[few][1], per_run[many][1])
    np.testing.assert_allclose(per_run[few][0] / per_run[many][0], units[many] / units[few])


@pytest.fixture(scope="module")
def family_export(tmp_path_factory):
    """A randomly initialised tiny family model for digits-mlp, exported at half precision."""
    import numpy as np

    from gpt_params.diffusion import DiffusionConfig
    from gpt_params.export import export_meta, save_export
    from gpt_params.model import PRESETS, ParamDiffusionTransformer
    from gpt_params.normalize import RoleNormalizer

    family_task = get_task("digits-mlp")
    roles = tuple(family_task.family)
    members = [get_task("digits-mlp", hidden=h) for h in [(5,), (12, 7)]]
    norm = RoleNormalizer.fit(
        roles,
        [
            (torch.stack([t.flatten(t.build(s)) for s in range(8)]).numpy(), t.layout, t.roles, t.fan_in)
            for t in members
        ],
        width_law=True,
    )
    cfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "tokenizer": "role"})
    torch.manual_seed(0)
    model = ParamDiffusionTransformer(None, (), cfg, DiffusionConfig(), family=family_task.family)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    clamp = (torch.full((len(roles),), -4.0), torch.full((len(roles),), 4.0))
    metric = np.array([[2.3, 0.5], [2.2, 0.4]])
    held = [(m, metric[i : i + 1, -1]) for i, m in enumerate(members)]  # best prompts 0.5 and 0.4
    meta = export_meta(family_task, "val_loss", metric[:, -1], metric, family=True, members=held)
    assert "layout" not in meta and meta["family"] == list(roles)
    out = tmp_path_factory.mktemp("fam") / "fam"
    save_export(out, model, norm, clamp, DiffusionConfig(), meta, torch.float16)
    return out, norm


def test_a_family_export_round_trips_and_steps_members_it_never_saw(family_export):
    from gpt_params.export import load_export
    from gpt_params.optimizer import LearnedOptimizer

    path, norm = family_export
    exp = load_export(path)
    assert exp.model.family is not None and torch.allclose(exp.normalizer.std, norm.std)
    for hidden in [(3,), (20,), (6, 4)]:  # widths no fit saw
        member = get_task("digits-mlp", hidden=hidden)
        opt = LearnedOptimizer(exp, member)
        net = member.build(1)
        out = opt.step(net, 0.5, generator=torch.Generator().manual_seed(0))
        assert [p.shape for p in out.parameters()] == [p.shape for p in net.parameters()]
        z = exp.member(member)[0].normalize(member.flatten(out))
        assert z.abs().max() <= 4.0 + 1e-4  # sampled within the clamp range, per role
    with pytest.raises(Exception, match="not a member of the family"):
        exp.member(get_task("mnist-mlp"))


def test_a_family_model_takes_any_member_in_any_form(family_export):
    from torch import nn

    from gpt_params.optimizer import LearnedOptimizer

    opt = LearnedOptimizer.from_pretrained(family_export[0])
    assert opt.family
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    seq = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 9), nn.ReLU(), nn.Linear(9, 6), nn.ReLU(), nn.Linear(6, 10)
    )
    out = opt.step(seq, 0.5, generator=g())
    assert isinstance(out, nn.Sequential) and out[3].weight.shape == (6, 9)
    member = get_task("digits-mlp", hidden=(9, 6))
    theta = member.flatten(member.build(0))
    same = member.to_module(theta)
    by_module = opt.step(same, 0.5, generator=g())
    by_state = opt.step(dict(same.state_dict()), 0.5, generator=g())
    by_vector = opt.step(theta, 0.5, generator=g(), hidden=(9, 6))
    assert torch.equal(member.flatten(by_module), member.layout.flatten(by_state))
    assert torch.equal(member.flatten(by_module), by_vector)
    assert opt.measure(same).shape == (1,)


@pytest.mark.parametrize(
    "net,message",
    [
        (
            lambda nn: nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 10)),
            "a Conv2d is not part of the digits-mlp family",
        ),
        (
            lambda nn: nn.Sequential(*[nn.Linear(a, b) for a, b in [(64, 8), (8, 8), (8, 8), (8, 10)]]),
            "hidden=\\(8, 8, 8\\) is not a member of the digits-mlp family",
        ),
        (
            lambda nn: nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 5)),
            "a net 64 -> ... -> 5 is not a member of the digits-mlp family",
        ),
        (
            lambda nn: nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)),
            "a Tanh is not part of the digits-mlp family",
        ),
        (
            lambda nn: torch.zeros(999),
            r"a flat vector of 999 values is not a digits-mlp network \(1210\); name its member",
        ),
    ],
)
def test_non_members_are_refused_naming_the_family(family_export, net, message):
    from torch import nn

    from gpt_params.errors import GptParamsError
    from gpt_params.optimizer import LearnedOptimizer

    opt = LearnedOptimizer.from_pretrained(family_export[0])
    with pytest.raises(GptParamsError, match=message):
        opt.step(net(nn), 0.5)


def test_a_single_architecture_model_refuses_a_member_name():
    from gpt_params.errors import GptParamsError
    from gpt_params.optimizer import LearnedOptimizer

    opt = LearnedOptimizer.from_pretrained("digits-mlp-loss")
    assert not opt.family
    with pytest.raises(GptParamsError, match="this model serves one architecture, digits-mlp"):
        opt.step(opt.task.build(0), 0.3, hidden=(16,))


def test_cli_optimize_takes_a_member_by_hidden_or_by_its_init(family_export, tmp_path, capsys):
    from safetensors.torch import load_file

    from gpt_params.cli import main

    model = str(family_export[0])
    out = tmp_path / "net.safetensors"
    assert main(["optimize", "--model", model, "--hidden", "6,4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("digits-mlp hidden=[6,4]: val_loss ")
    assert "(prompt 0.4)" in printed  # the two-layer member's own best prompt, not the default member's 0.5
    assert load_file(out)["fc2.weight"].shape == (4, 6)
    assert main(["optimize", "--model", model, "--init", str(out)]) == 0  # the member read off the file
    assert capsys.readouterr().out.startswith("digits-mlp hidden=[6,4]: val_loss ")
    for args, message in [
        (["--model", model, "--hidden", "6,x"], "--hidden '6,x': expected hidden widths separated by commas"),
        (["--model", model, "--hidden", "300"], "hidden=\\(300,\\) is not a member of the digits-mlp family"),
        (["--model", "digits-mlp-loss", "--hidden", "8"], "serves one architecture, digits-mlp"),
    ]:
        assert main(["optimize", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and __import__("re").search(message, err), err


def test_evaluation_scripts_bind_a_family_model_to_a_held_or_held_out_member(family_export, tmp_path):
    import json

    from gpt_params.zoo_reader import Zoo

    from .conftest import repo_root, run_script

    zoo = harvest_mixed(
        tmp_path / "mixed.h5", runs=6, ckpts_per_run=2, cohort_size=3, val_frac=0, test_frac=0.5
    )
    held = ",".join(map(str, Zoo(zoo).member_options[0]["hidden"]))
    script = repo_root() / "eval" / "prompting.py"
    common = ["--model", family_export[0], "--zoo", zoo, "--prompts", "2", "--samplers", "ddim:2"]
    for hidden in [
        held,
        "10",
    ]:  # a member the zoo holds (its test runs), and width 10, which no mixed zoo holds
        out = tmp_path / f"p{hidden}.json"
        res = run_script(
            script, *common, "--hidden", hidden, "--nets", "2", "--out", out, "--plot", tmp_path / "p.png"
        )
        assert res.returncode == 0, res.stderr
        report = json.loads(out.read_text())
        assert report["nets"] == (2 if hidden == "10" else min(2, len(Zoo(zoo).runs_of_member(0, "test"))))
    res = run_script(script, *common, "--nets", "2")
    assert res.returncode == 2 and "name the member to evaluate with --hidden" in res.stderr


def test_audit_and_seen_inits_work_per_member_and_refuse_a_member_never_held(family_export, tmp_path):
    import json

    from gpt_params.zoo_reader import Zoo

    from .conftest import repo_root, run_script

    zoo = harvest_mixed(
        tmp_path / "mixed.h5", runs=8, ckpts_per_run=3, cohort_size=4, val_frac=0, test_frac=0.25
    )
    z = Zoo(zoo)
    member = next(  # split membership is a hash of the run id: take a member with runs in both
        m
        for m in range(len(z.members))
        if len(z.runs_of_member(m, "train")) >= 2 and len(z.runs_of_member(m, "test"))
    )
    held = ",".join(map(str, z.member_options[member]["hidden"]))
    common = ["--model", family_export[0], "--zoo", zoo, "--sampler-steps", "2"]
    audit = repo_root() / "eval" / "audit.py"
    out = tmp_path / "audit.json"
    res = run_script(audit, *common, "--hidden", held, "--nets", "1", "--bank", "50", "--out", out)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    own_train = z.runs_of_member(member, "train")
    assert (
        report["architecture"]
        == get_task("digits-mlp", hidden=tuple(z.member_options[member]["hidden"])).label
    )
    # the bank holds this member's training checkpoints past the init only, all of them when fewer than --bank
    assert report["bank"] == min(50, len(own_train) * (z.n_ckpts - 1))
    res = run_script(audit, *common, "--hidden", "10", "--nets", "1", "--out", out)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "never held" in res.stderr, res.stderr

    seen = repo_root() / "benchmarks" / "seen_inits.py"
    res = run_script(seen, *common, "--hidden", held, "--nets", "2", "--prompts", "2")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["nets"] == min(2, len(own_train))
    for hidden, message in [("10", "no train-split runs of"), ("x", "expected hidden widths")]:
        res = run_script(seen, *common, "--hidden", hidden, "--nets", "2")
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr


def test_family_eval_scores_each_member_beside_a_zero_shot_specialist(family_export, tmp_path):
    import dataclasses
    import importlib.util
    import json

    from gpt_params.optimizer import LearnedOptimizer

    from .conftest import repo_root, run_script

    path = repo_root() / "eval" / "family.py"
    out = tmp_path / "family.json"
    res = run_script(
        path, "--model", family_export[0], "--widths", "5", "12", "--shapes", "6,4", "--specialist",
        "digits-mlp-loss", "--nets", "2", "--prompts", "2", "--adam-steps", "20", "--out", out,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["hidden"]) for r in rows] == [
        ("family", [5]), ("zero-shot digits-mlp-loss", [5]), ("family", [12]),
        ("zero-shot digits-mlp-loss", [12]), ("family", [6, 4]),
    ]  # fmt: skip
    assert out.with_suffix(".png").stat().st_size > 0
    table = [line for line in res.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 4 and table[1].startswith("| 5 |") and table[-1].startswith("| 6-4 |"), table
    bad = run_script(path, "--model", family_export[0], "--widths", "300", "--out", out)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "digits-mlp family" in bad.stderr, (
        bad.stderr
    )
    for flag, value, message in [
        ("--guidance", "nan", "--guidance"),
        ("--sampler-steps", "0", "--sampler-steps"),
    ]:
        bad = run_script(path, "--model", family_export[0], flag, value, "--out", out)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr
    res = run_script(
        path, "--model", family_export[0], "--widths", "5", "--shapes", "--nets", "2", "--prompts", "2",
        "--adam-steps", "5", "--guidance", "2.5", "--sampler-steps", "2", "--out", tmp_path / "g.json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "g.json").read_text())
    assert (report["guidance"], report["sampler_steps"]) == (2.5, 2) and len(report["rows"]) == 1

    # at the specialist's own width the transplant keeps weights and normaliser: the same samples
    # (with the clamp off: a per-coordinate clamp becomes its per-tensor envelope)
    spec = importlib.util.spec_from_file_location("family_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = LearnedOptimizer.from_pretrained("digits-mlp-loss")
    plain = LearnedOptimizer(dataclasses.replace(shipped.exported, clamp=None), shipped.task)
    moved = LearnedOptimizer(module.transplant(plain, plain.task), plain.task)
    theta = plain.task.unseen_inits(2)
    a, b = (
        o.step(theta, plain.best_prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
        for o in (plain, moved)
    )
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # a tensor-mean of equal stats rounds


def test_demo_shows_a_family_model_on_each_demo_member(family_export, tmp_path, capsys):
    import json

    from gpt_params.cli import DEMO_MEMBERS, main

    assert main(["demo", "--models", str(family_export[0]), "--nets", "2", "--adam-steps", "20",
                 "--out", str(tmp_path / "demo")]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "demo" / "demo.json").read_text())["models"]
    assert [r["model"] for r in rows] == [f"{family_export[0]} {'-'.join(map(str, h))}" for h in DEMO_MEMBERS]
    assert all(r["nets"] == 2 and r["achieved"] == r["achieved"] for r in rows)  # not NaN
    assert "64-64" in capsys.readouterr().out


def test_export_sets_the_demo_members_and_refuses_non_members_in_one_line(family_export, tmp_path, capsys):
    import json

    from gpt_params.cli import main

    src = str(family_export[0])
    out = tmp_path / "demo-members"
    assert main(["export", src, "--out", str(out), "--demo-members", "10", "32,16"]) == 0
    assert json.loads((out / "config.json").read_text())["demo_members"] == [[10], [32, 16]]
    assert main(["demo", "--models", str(out), "--nets", "2", "--adam-steps", "20",
                 "--out", str(tmp_path / "demo")]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "demo" / "demo.json").read_text())["models"]
    assert [r["model"] for r in rows] == [f"{out} 10", f"{out} 32-16"]
    capsys.readouterr()
    for bad, named in (("300", "digits-mlp"), ("8,8,8", "digits-mlp"), ("x", "--demo-members 'x'")):
        assert main(["export", src, "--out", str(tmp_path / "bad"), "--demo-members", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gpt-params: error") and err.count("\n") == 1 and named in err, err
        assert not (tmp_path / "bad").exists()


def test_each_member_gets_its_own_best_prompt_or_that_of_the_nearest_member_held():
    import numpy as np

    from gpt_params.export import best_prompt_for, export_meta

    family = get_task("digits-mlp")
    held = {(5,): 0.9, (40,): 0.3, (12, 7): 0.5, (60, 2): 0.7}
    members = [(family.member(h), np.array([v, v + 0.1, v + 0.2, np.nan])) for h, v in held.items()]
    finals = np.concatenate([f for _, f in members])
    meta = export_meta(family, "val_loss", finals, finals[:, None], family=True, members=members)
    for h, v in held.items():  # a member the zoo held: its own 5% quantile
        assert best_prompt_for(meta, family.member(h)) == pytest.approx(v + 0.01)
    # held out: the held member with as many layers, nearest in log-widths; 64-64 has about as many
    # parameters as the bottlenecked 60-2 but the widths of neither, and is nearer 12-7 in log-widths
    assert best_prompt_for(meta, family.member((6,))) == pytest.approx(0.91)
    assert best_prompt_for(meta, family.member((64,))) == pytest.approx(0.31)
    assert best_prompt_for(meta, family.member((64, 64))) == pytest.approx(0.51)
    assert best_prompt_for(meta, family.member((48, 5))) == pytest.approx(0.71)
    single = export_meta(family, "val_loss", finals, finals[:, None])  # one architecture: one best prompt
    assert "member_best_prompts" not in single
    assert best_prompt_for(single, family.member((5,))) == single["best_prompt"]


def test_a_family_model_clamps_each_member_to_its_own_best_prompt(family_export):
    import warnings

    from gpt_params.optimizer import LearnedOptimizer

    opt = LearnedOptimizer.from_pretrained(family_export[0])
    for hidden, best in [((5,), 0.5), ((12, 7), 0.4), ((6,), 0.5), ((40, 40), 0.4)]:
        member = opt.task.member(hidden)
        assert LearnedOptimizer(opt.exported, member).best_prompt == pytest.approx(best)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step(member.build(0), target_loss=-1.0, num_inference_steps=1)
        assert f"clamped to {best}" in str(caught[0].message), (hidden, caught[0].message)


def test_role_balance_weighs_every_role_of_a_member_the_same():
    from gpt_params.diffusion import role_balance

    for hidden in [(4,), (250,), (9, 6)]:
        task = get_task("mnist-mlp", hidden=hidden)
        role_id = plan_of(task).role_id
        w = role_balance(role_id)
        assert w.shape == role_id.shape and abs(float(w.mean()) - 1) < 1e-5
        totals = torch.stack([w[role_id == r].sum() for r in role_id.unique()])
        torch.testing.assert_close(totals, torch.full_like(totals, float(totals[0])))


def test_role_errors_reports_every_role_of_a_held_member_and_refuses_one_never_held(family_export, tmp_path):
    import json

    from gpt_params.zoo_reader import Zoo

    from .conftest import repo_root, run_script

    zoo = harvest_mixed(
        tmp_path / "mixed.h5", runs=8, ckpts_per_run=3, cohort_size=4, val_frac=0.5, test_frac=0
    )
    z = Zoo(zoo)
    member = next(m for m in range(len(z.members)) if len(z.runs_of_member(m, "val")))
    held = ",".join(map(str, z.member_options[member]["hidden"]))
    script = repo_root() / "benchmarks" / "role_errors.py"
    common = ["--model", family_export[0], "--zoo", zoo, "--nets", "2", "--timesteps", "10", "900"]
    res = run_script(script, *common, "--hidden", held)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    roles = set(report["step_rms"])
    assert {"in_weight", "in_bias", "out_weight", "out_bias"} <= roles == set(report["denoiser_rms"]["900"])
    assert all(v > 0 for v in report["step_rms"].values()) and report["nets"] <= 2
    assert set(report["init_rms"]) == roles and all(v > 0 for v in report["init_rms"].values())
    assert set(report["test_loss"]) == {"init", "last", "step"}
    res = run_script(script, *common, "--hidden", held, "--inference-steps", "2", "1")
    assert res.returncode == 0, res.stderr
    loss = json.loads(res.stdout.splitlines()[-1])["test_loss"]
    assert set(loss) == {"init", "last", "step", "step_ddim2", "step_ddim1"}
    assert loss["step"] == loss["step_ddim2"] != loss["step_ddim1"]
    res = run_script(script, *common, "--hidden", held, "--inference-steps", "0")
    assert res.returncode == 2 and "expected positive step counts" in res.stderr, res.stderr
    res = run_script(script, *common, "--hidden", "10")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no val-split runs" in res.stderr, (
        res.stderr
    )
    res = run_script(script, *common, "--hidden", held, "--reruns")  # G.pt's SGD recipe: not retrained
    assert res.returncode == 2 and "retrains the adam preset's recipe" in res.stderr, res.stderr
    adam = tmp_path / "adam.h5"
    harvest_mixed(adam, runs=8, ckpts_per_run=3, cohort_size=4, val_frac=0.5, test_frac=0, preset="adam")
    z = Zoo(adam)
    member = next(m for m in range(len(z.members)) if len(z.runs_of_member(m, "val")))
    held = ",".join(map(str, z.member_options[member]["hidden"]))
    res = run_script(script, *common[:3], adam, *common[4:], "--hidden", held, "--reruns")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert set(report["rerun_rms"]) == set(report["init_rms"]) and all(
        v > 0 for v in report["rerun_rms"].values()
    )
    assert (
        len(report["rerun_test_loss"]) == 2 and report["rerun_test_loss"][0] != report["rerun_test_loss"][1]
    )


def test_step_time_reports_each_member_attention_path_edge_width_and_batch():
    import json

    from .conftest import repo_root, run_script

    script = repo_root() / "benchmarks" / "step_time.py"
    tiny = ["--preset", "tiny", "--width", "0", "--depth", "0", "--steps", "1"]
    res = run_script(script, *tiny, "--hidden", "3", "5,2", "--edge-width", "0", "4")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["hidden"], r["attention"], r["edge_width"]) for r in rows] == [
        ([3], "explicit", 16), ([3], "fused", 16), ([5, 2], "explicit", 16), ([5, 2], "fused", 16),
        ([3], "explicit", 4), ([3], "fused", 4), ([5, 2], "explicit", 4), ([5, 2], "fused", 4),
    ]  # fmt: skip
    assert rows[0]["params"] == 784 * 3 + 3 + 3 * 10 + 10 and rows[0]["pairs"] == 256
    assert all(r["s_per_step"] > 0 and r["params_per_s"] > 0 for r in rows)
    res = run_script(script, *tiny, "--task", "digits-mlp", "--hidden", "3", "4,2", "--attention", "explicit")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["task"], r["hidden"], r["params"]) for r in rows] == [
        ("digits-mlp", [3], 64 * 3 + 3 + 3 * 10 + 10), ("digits-mlp", [4, 2], 64 * 4 + 4 + 4 * 2 + 2 + 2 * 10 + 10)
    ]  # fmt: skip
    res = run_script(
        script, *tiny, "--task", "digits-mlp", "--hidden", "3", "--attention", "explicit", "--single"
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]  # the family model, then member 3's own
    assert [(r["model"], r["hidden"], r["params"], r["pairs"]) for r in rows] == [
        ("family", [3], 235, 256), ("single", [3], 235, 256)
    ]  # fmt: skip
    res = run_script(script, *tiny, "--task", "cifar10-cnn", "--hidden", "3")
    assert res.returncode != 0 and "cifar10-cnn" in res.stderr
    res = run_script(
        script,
        *tiny,
        "--hidden",
        "3",
        "--attention",
        "explicit",
        "--batch-params",
        "100000",
        "2000",
        "--batch-size",
        "32",
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    # 100,000 // 2,395 parameters = 41 pairs, cut to --batch-size 32; 2,000 // 2,395 = 0, raised to the floor of 16
    assert [(r["batch_params"], r["pairs"]) for r in rows] == [(100000, 32), (2000, 16)]
    res = run_script(script, *tiny, "--hidden", "5,2", "--attention", "explicit", "--no-edge-messages")
    assert res.returncode == 0, res.stderr
    assert [json.loads(line)["edge_messages"] for line in res.stdout.splitlines()] == [False]
    assert rows[0]["edge_messages"] is True
    res = run_script(script, *tiny, "--hidden", "3", "5,2", "--attention", "explicit", "--mix", "1")
    assert res.returncode == 0, res.stderr
    (mix,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert mix["members"] == [[3], [5, 2]] and set(mix["s_per_step"]) == {
        "back_to_back", "round_robin", "back_to_back_again"
    }  # fmt: skip
    assert mix["round_robin_over_back_to_back"] > 0
    for bad in (["--hidden", "4,4,4"], ["--batch-params", "0"]):
        res = run_script(script, *tiny, *bad)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert (
            "not a member of the mnist-mlp family" if bad[0] == "--hidden" else "--batch-params [0]"
        ) in res.stderr


def test_step_log_summarises_first_and_later_batches_per_member(tmp_path):
    import json

    from .conftest import repo_root, run_script

    log = tmp_path / "steps.jsonl"
    records = [
        ([4], 256, 0.01, 0.30),
        ([8, 8], 32, 0.0, 0.90),
        ([4], 256, 0.02, 0.20),
        ([8, 8], 32, 0.01, 0.70),
    ]
    records += [([4], 256, 0.0, 0.40)]
    log.write_text(
        "".join(
            json.dumps(dict(zip(("hidden", "pairs", "data_s", "step_s"), r, strict=True))) + "\n"
            for r in records
        )
    )
    script = repo_root() / "benchmarks" / "step_log.py"
    res = run_script(script, log, "--json", "--top", "1")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["batches"] == 5 and s["seconds"] == 2.5
    g = s["groups"]
    assert set(g) == {"one-layer first", "one-layer later", "2-layer first", "2-layer later"}
    assert g["one-layer later"] == {
        "batches": 2, "seconds": 0.6, "s_per_batch": 0.3, "tokens_per_batch": 1024, "data_share": round(0.02 / 0.6, 3)
    }  # fmt: skip
    assert g["2-layer first"]["s_per_batch"] == 0.9 and g["2-layer later"]["tokens_per_batch"] == 512
    assert [m["hidden"] for m in s["slowest_later"]] == [[8, 8]]  # 0.70 s against 0.30 s
    res = run_script(script, log)
    assert res.returncode == 0 and "8-8 (32 pairs)" in res.stdout, res.stderr
    log.write_text('{"hidden": [4]}\n')
    for bad, message in ((log, f"{log}:1: not a step record"), (tmp_path / "none.jsonl", "no such step log")):
        res = run_script(script, bad)
        assert res.returncode != 0 and res.stderr.count("\n") == 1 and message in res.stderr, res.stderr

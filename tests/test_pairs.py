import numpy as np
import pytest
import torch

from gpt_params.errors import GptParamsError
from gpt_params.harvest import HarvestConfig, harvest
from gpt_params.layout import permute
from gpt_params.normalize import ParamNormalizer
from gpt_params.pairs import PairConfig, PairStream, best_index
from gpt_params.tasks import get_task
from gpt_params.zoo_reader import Zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs") / "z.h5"
    harvest(
        HarvestConfig(task="digits-mlp", runs=24, ckpts_per_run=6, cohort_size=12, epochs=2, out=str(out))
    )
    return Zoo(out)


def stream(zoo, augment=False, start_step=0, **kw):
    task = get_task("digits-mlp")
    norm = ParamNormalizer(torch.zeros(task.layout.numel), torch.ones(task.layout.numel))
    cfg = PairConfig(augment=augment, buffer_runs=6, refresh_runs=2, **kw)
    return PairStream(
        str(zoo.path),
        zoo.runs("train"),
        64,
        cfg,
        norm,
        task.layout,
        task.symmetries,
        "digits-mlp",
        seed=1,
        start_step=start_step,
    )


def first(s, n):
    it = iter(s)
    return [next(it) for _ in range(n)]


def find_pair(zoo, rows, start, future):
    """(row, i, j) of a batch element within the zoo, or None."""
    for r in rows:
        p = zoo.params(int(r))  # (K, D)
        i = np.flatnonzero((p == start).all(1))
        j = np.flatnonzero((p == future).all(1))
        if len(i) and len(j):
            return int(r), int(i[0]), int(j[0])
    return None


def test_pairs_come_from_one_train_run_forward_in_time_with_val_conditioning(zoo):
    batch = first(stream(zoo), 3)[-1]
    train = zoo.runs("train")
    for b in range(0, 64, 7):
        found = find_pair(zoo, train, batch["theta_start"][b].numpy(), batch["theta_future"][b].numpy())
        assert found is not None, "pair not found in any train-split run"
        r, i, j = found
        assert j >= i
        val = zoo.metrics["val_loss"][r]
        assert batch["start_metric"][b].item() == pytest.approx(float(np.log(val[i])), rel=1e-5)
        assert batch["prompt"][b].item() == pytest.approx(float(np.log(val[j])), rel=1e-5)


def test_stream_is_a_function_of_the_step_so_resume_sees_the_same_batches(zoo):
    full = first(stream(zoo), 5)
    resumed = first(stream(zoo, start_step=3), 2)
    for a, b in zip(full[3:], resumed, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k])


def test_init_fraction_is_respected(zoo):
    batches = first(stream(zoo, init_frac=1.0), 2)
    inits = {tuple(zoo.params(int(r))[0][:5]) for r in zoo.runs("train")}
    assert all(tuple(s[:5].tolist()) in inits for b in batches for s in b["theta_start"].numpy())


def later_ends(zoo, **kw):
    """The checkpoint index of every pair's later end over 3 batches that all start at the init."""
    train = zoo.runs("train")
    out = []
    for b in first(stream(zoo, init_frac=1.0, same_frac=0.0, **kw), 3):
        for s, f in zip(b["theta_start"].numpy(), b["theta_future"].numpy(), strict=True):
            out.append(find_pair(zoo, train, s, f)[2])
    return np.array(out)


def test_late_bias_draws_later_checkpoints_and_bad_fractions_are_refused(zoo):
    uniform, late = later_ends(zoo), later_ends(zoo, late_bias=3.0)
    assert uniform.min() >= 1 and late.min() >= 1 and late.max() <= zoo.n_ckpts - 1
    # 5 later checkpoints: uniform gives the last one 1/5 of the pairs, late_bias 3 gives it 1 - 0.8^3
    assert abs(np.mean(uniform == zoo.n_ckpts - 1) - 0.2) < 0.1
    assert abs(np.mean(late == zoo.n_ckpts - 1) - 0.488) < 0.1
    for bad in ({"late_bias": 0.0}, {"init_frac": 1.5}):
        with pytest.raises(GptParamsError, match=next(iter(bad))):
            stream(zoo, **bad)


def unit_perms(layout, groups, plain, permuted):
    """The hidden-unit permutations (``[(1, size)]``, one per group) that turn network ``plain`` (D,)
    into ``permuted`` (D,): units are matched by the sorted values of everything they own, which no
    other group's permutation changes."""
    perms = []
    for group in groups:
        sig = []
        for theta in (plain, permuted):
            views = layout.unflatten(theta)
            parts = [views[name].movedim(axis, 0).reshape(group.size, -1) for name, axis in group.members]
            sig.append(torch.cat(parts, 1).sort(1).values)  # (size, values per unit)
        match = (sig[1][:, None] == sig[0][None]).all(-1)  # (size, size): unit k of permuted is unit j
        assert (match.sum(1) == 1).all(), "units are not told apart by their values"
        perms.append(match.long().argmax(1)[None])
    return perms


def test_augmentation_permutes_both_ends_alike_and_keeps_the_function(zoo):
    plain, aug = first(stream(zoo), 1)[0], first(stream(zoo, augment=True), 1)[0]
    assert torch.equal(plain["prompt"], aug["prompt"])
    assert not torch.equal(plain["theta_start"], aug["theta_start"])
    task = get_task("digits-mlp")
    layout, groups = task.layout, task.symmetries
    moved = 0
    for b in range(len(plain["prompt"])):
        # the permutation read off the start must be the one that maps the future end too
        perms = unit_perms(layout, groups, plain["theta_start"][b], aug["theta_start"][b])
        moved += any(not torch.equal(p[0], torch.arange(len(p[0]))) for p in perms)
        for key in ("theta_start", "theta_future"):
            assert torch.equal(permute(plain[key][b : b + 1], layout, groups, perms)[0], aug[key][b]), (
                f"pair {b}: {key} is not the start's permutation of the unaugmented {key}"
            )
    assert moved == len(plain["prompt"])
    x = task.data.x["val"][:20]
    for key in ("theta_start", "theta_future"):
        with torch.no_grad():
            a = task.to_module(plain[key][0])(x)
            b = task.to_module(aug[key][0])(x)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_metric_normalisation_round_trips():
    v = torch.tensor([0.3, 1.0, 2.3])
    for metric, name in (("val_loss", "mnist-mlp"), ("val_error", "mnist-mlp"), ("return_mean", "cartpole")):
        task = get_task(name)
        torch.testing.assert_close(task.denormalize_metric(task.normalize_metric(v, metric), metric), v)
    assert get_task("cartpole").normalize_metric(torch.tensor([500.0]), "return_mean").item() == 1.0


def test_early_stopping_cuts_each_run_at_its_best_checkpoint(zoo):
    # synthetic buffer: checkpoint k of slot s is the constant vector 100 s + k; validation loss falls
    # until checkpoint best[s] and rises after it, as in a run that overfits
    k, d = 10, get_task("digits-mlp").layout.numel
    best = np.array([2, 4, 9, 0, 6, 3])
    code = 100 * np.arange(6)[:, None] + np.arange(k)[None]  # (6, K)
    params = np.broadcast_to(code[..., None].astype(np.float32), (6, k, d)).copy()
    metric = (1.0 + np.abs(np.arange(k)[None] - best[:, None]) / 10).astype(np.float32)  # (6, K)
    assert np.array_equal(best_index(metric, higher_is_better=False), best)
    for early_stop in (False, True):
        batch = stream(zoo, init_frac=0.3, early_stop=early_stop).batch(0, params, metric)
        start = batch["theta_start"][:, 0].round().long().numpy()
        future = batch["theta_future"][:, 0].round().long().numpy()
        slot, i, j = start // 100, start % 100, future % 100
        assert (future // 100 == slot).all() and (j >= i).all()
        past_best = j > best[slot]
        assert past_best.any() != early_stop, (
            f"early_stop={early_stop}: {past_best.sum()} pairs past the best"
        )
        if early_stop:
            assert (j == best[slot]).any()


def test_best_index_ignores_non_finite_and_follows_the_direction():
    m = np.array([[2.0, np.nan, 1.0, 1.5], [np.inf, 3.0, 5.0, 4.0]])
    assert best_index(m, higher_is_better=False).tolist() == [2, 1]
    assert best_index(m, higher_is_better=True).tolist() == [0, 2]

"""Supervised classification tasks: G.pt's MNIST MLP and CIFAR-10 CNN, the CNN on MNIST, a digits MLP."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt_params.errors import TaskError
from gpt_params.layout import PermGroup, Role
from gpt_params.recipes import SUPERVISED_PRESETS
from gpt_params.tasks.base import Baseline, BaselineConfig, Task, TrainedCohort
from gpt_params.tasks.data import SPLITS, Splits

EVAL_BUDGET = 1 << 24  # floats of activations per evaluation chunk (~64 MB)


HIDDEN_WIDTHS = (1, 256)  # smallest and largest hidden width of an MLP family member
MAX_HIDDEN_LAYERS = 2


class MLP(nn.Module):
    """in -> hidden[0] -> ... -> out with ReLU between, input flattened; layers ``fc1 .. fc{L+1}``
    (one hidden layer: ``fc1``, ``fc2``, the names G.pt's 784-10-10 has always had)."""

    def __init__(self, n_in: int, hidden: int | Sequence[int], n_out: int) -> None:
        super().__init__()
        widths = (n_in, *((hidden,) if isinstance(hidden, int) else hidden), n_out)
        self.n_layers = len(widths) - 1
        for i in range(self.n_layers):
            setattr(self, f"fc{i + 1}", nn.Linear(widths[i], widths[i + 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for i in range(1, self.n_layers):
            h = F.relu(getattr(self, f"fc{i}")(h))
        return getattr(self, f"fc{self.n_layers}")(h)


def mlp_logits(params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Logits ``(B, C, N)`` of B MLPs (``params``: name -> ``(B, *shape)``), classes on dim 1.

    ``x`` is ``(N, ...)`` shared by all nets (``shared=True``: the first layer of all B nets is one
    wide GEMM) or ``(B, N, ...)``, one minibatch per net (batched GEMMs). Computing in the
    ``(B, features, N)`` layout keeps every matmul's long dimension contiguous: on a CPU this runs
    2-3x faster than the module's ``(N, features)`` layout, forward and backward.
    """
    w1, b1 = params["fc1.weight"], params["fc1.bias"]  # (B, H, I), (B, H)
    b, h, i = w1.shape
    if shared:
        n = x.shape[0]
        hid = (w1.reshape(b * h, i) @ x.reshape(n, i).T).view(b, h, n)  # (B, H, N)
    else:
        n = x.shape[1]
        hid = torch.bmm(w1, x.reshape(b, n, i).transpose(1, 2))  # (B, H, N)
    hid = hid + b1[:, :, None]
    layer = 2
    while f"fc{layer}.weight" in params:  # (B, H_out, H_in) @ (B, H_in, N) + bias
        hid = torch.baddbmm(params[f"fc{layer}.bias"][:, :, None], params[f"fc{layer}.weight"], hid.relu())
        layer += 1
    return hid  # (B, C, N)


def parse_hidden(text: str | None, flag: str = "--hidden") -> tuple[int, ...] | None:
    """``--hidden 64,32`` as ``(64, 32)`` (``None`` stays ``None``); a :class:`TaskError` naming ``flag``
    otherwise."""
    try:
        return None if text is None else tuple(int(w) for w in text.split(","))
    except ValueError:
        raise TaskError(
            f"{flag} {text!r}: expected hidden widths separated by commas, e.g. 32 or 64,32"
        ) from None


def mlp_hidden(family: str, hidden: int | Sequence[int]) -> tuple[int, ...]:
    """``hidden`` as a member of an MLP family's widths: one or two hidden layers of 1 to 256 units."""
    widths = (hidden,) if isinstance(hidden, int) else tuple(hidden) if isinstance(hidden, Sequence) else ()
    low, high = HIDDEN_WIDTHS
    ok = 1 <= len(widths) <= MAX_HIDDEN_LAYERS and all(
        isinstance(w, int) and not isinstance(w, bool) and low <= w <= high for w in widths
    )
    if not ok:
        raise TaskError(
            f"hidden={hidden!r} is not a member of the {family} family; expected one or two "
            f"hidden layers of {low} to {high} units, e.g. (32,) or (64, 32)"
        )
    return widths


class CNN(nn.Module):
    """G.pt's CNN: conv3x3 c->16 stride 2, ReLU, conv3x3 16->32, ReLU, global average pool, linear 32->10;
    both convolutions without bias."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=2, bias=False)
        self.conv2 = nn.Conv2d(16, 32, 3, bias=False)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))  # (N, 32, H', W')
        return self.fc(h.mean(dim=(2, 3)))


CPU_CHUNK = 1024  # net-images per grouped convolution on a CPU: a working set that stays in cache


def cnn_logits(params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    """Logits ``(B, C, N)`` of B :class:`CNN` nets as grouped convolutions (net b is group b).

    ``x`` is ``(N, c, H, W)`` shared by all nets or ``(B, N, c, H, W)``. On a CPU the nets go through
    in chunks of about ``CPU_CHUNK`` net-images: measured on 2 cores, 64 nets x 128 images train 2.5x
    faster in chunks of 4 nets than as one call (their activations stay in cache); a GPU takes all at once.
    """
    nets = params["fc.bias"].shape[0]
    n = x.shape[0] if shared else x.shape[1]
    chunk = max(1, CPU_CHUNK // n) if x.device.type == "cpu" else nets
    if chunk < nets:
        parts = [
            _cnn_logits(
                {k: v[a : a + chunk] for k, v in params.items()}, x if shared else x[a : a + chunk], shared
            )
            for a in range(0, nets, chunk)
        ]
        return torch.cat(parts)
    return _cnn_logits(params, x, shared)


def _cnn_logits(params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
    w1, w2 = params["conv1.weight"], params["conv2.weight"]  # (B, 16, c, 3, 3), (B, 32, 16, 3, 3)
    b = w1.shape[0]
    if shared:  # one ungrouped convolution with B * 16 output channels
        h = F.conv2d(x, w1.reshape(b * w1.shape[1], *w1.shape[2:]), stride=2)  # (N, B*16, H1, W1)
    else:  # images of net b become input channels of group b
        n, c = x.shape[1], x.shape[2]
        xx = x.transpose(0, 1).reshape(n, b * c, *x.shape[3:])  # (N, B*c, H, W)
        h = F.conv2d(xx, w1.reshape(b * w1.shape[1], *w1.shape[2:]), stride=2, groups=b)
    h = F.conv2d(h.relu(), w2.reshape(b * w2.shape[1], *w2.shape[2:]), groups=b).relu()  # (N, B*32, H2, W2)
    feat = h.mean((2, 3)).view(-1, b, w2.shape[1]).permute(1, 2, 0)  # (B, 32, N)
    return torch.baddbmm(params["fc.bias"][:, :, None], params["fc.weight"], feat)  # (B, C, N)


def flip_crop(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """G.pt's CIFAR-10 augmentation of a batch ``(N, c, H, W)``: each image flipped left-right with
    probability 1/2, then cropped back to ``H x W`` from its 4-pixel zero padding at a uniform offset."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5  # (N,)
    dy, dx = torch.randint(0, 9, (2, n), generator=gen)  # (N,) each: offsets into the padded image
    flip, dy, dx = flip.to(x.device), dy.to(x.device), dx.to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (4, 4, 4, 4))  # (N, c, H+8, W+8)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    return padded[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(x.shape[1], device=x.device)[None, :, None, None],
        rows,
        cols,
    ]


class SupervisedTask(Task):
    """A classifier trained with cross-entropy; metrics are loss and error on each split."""

    kind = "supervised"
    objective = "val_loss"
    harvest_presets = SUPERVISED_PRESETS
    harvest_unit = "step"
    test_metrics = ("test_loss", "test_error")
    harvest_devices = ("cpu", "cuda", "mps")

    def __init__(
        self,
        name: str,
        factory: Callable[[], nn.Module],
        symmetries: tuple[PermGroup, ...],
        data_loader: Callable[[], Splits],
        activations_per_example: int,
        data: Splits | None = None,
        fast_logits: Callable[[dict[str, torch.Tensor], torch.Tensor, bool], torch.Tensor] | None = None,
        eval_chunk: int = 4096,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        options: dict | None = None,
        family: dict[str, Role] | None = None,
        roles: dict[str, str] | None = None,
        fan_in: dict[str, int] | None = None,
        member_factory: Callable[..., SupervisedTask] | None = None,
        convolutional: bool = False,
    ) -> None:
        self.name = name
        self.convolutional = convolutional  # its demo baseline compares ``BaselineConfig.cnn_nets`` inits
        self.options = options or {}
        if family is not None:
            self.family, self.roles, self.fan_in = family, roles or {}, fan_in or {}
            self._member_factory = member_factory
        self._factory = factory
        self._symmetries = symmetries
        self._data_loader = data_loader
        self._activations = activations_per_example
        self._fast_logits = fast_logits
        self.eval_chunk = eval_chunk  # examples per evaluation call
        self.augment = augment  # training-image augmentation ``gpt-params harvest --augment`` applies
        if data is not None:
            self.__dict__["data"] = data  # injected data (tests, custom sources) replaces the loader

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)  # PyTorch default init, reproducible from the seed
        return self._factory()

    def member(self, hidden: int | Sequence[int]) -> SupervisedTask:
        """The member of this task's family with ``hidden`` widths, sharing this task's data."""
        if self.family is None:
            raise TaskError(f"{self.name} is one architecture, not a family of them")
        return self._member_factory(hidden=hidden, data=self.__dict__.get("data"))

    def member_of(self, params) -> SupervisedTask:
        """The family member ``params`` is (a module, a state dict, or a list of them, one member),
        read from its tensors' shapes; a :class:`TaskError` naming the family for anything else."""
        if self.family is None:
            return self
        return self.member(mlp_member_of(self.name, self.family["in_weight"].features, params))

    def draw_member(self, rng: np.random.Generator, width_power: float = 1.0) -> SupervisedTask:
        """A member of this task's family drawn from the ``--architectures mixed`` distribution (widths
        with density proportional to width^-``width_power``), sharing this task's data."""
        if self.family is None:
            raise TaskError(
                f"{self.name} is one architecture, not a family; --architectures mixed needs a family"
            )
        return self._member_factory(hidden=draw_mlp_member(rng, width_power), data=self.data)

    @property
    def symmetries(self) -> tuple[PermGroup, ...]:
        return self._symmetries

    @property
    def metric_names(self) -> tuple[str, ...]:
        return tuple(f"{s}_{m}" for s in SPLITS for m in ("loss", "error"))

    def higher_is_better(self, metric: str) -> bool:
        if metric not in self.metric_names:
            raise KeyError(f"unknown metric {metric!r}; {self.name} records {self.metric_names}")
        return False

    def metric_kind(self, metric: str) -> str:
        if metric not in self.metric_names:
            raise TaskError(f"unknown metric {metric!r}; {self.name} records {self.metric_names}")
        return metric.split("_", 1)[1]  # "val_loss" -> "loss"

    def held_out_metric(self, metric: str) -> str:
        """The test split's version of ``metric`` (``val_loss`` -> ``test_loss``): models condition on
        validation metrics, so test images are data none of them saw."""
        return "test_" + self.metric_kind(metric)

    def check_data(self) -> None:
        _ = self.data

    def train_cohort(self, cfg, cohort_id: int, run_ids: np.ndarray, on_step=None) -> TrainedCohort:
        from gpt_params.tasks.batched import train_cohort

        return train_cohort(self, cfg, cohort_id, run_ids, on_step)

    def score_held_out(self, theta: torch.Tensor, metric: str, cfg: BaselineConfig) -> tuple[str, np.ndarray]:
        name = self.held_out_metric(metric)
        return name, self.evaluate_only(theta, (name,))[name]

    def baseline_nets(self, cfg: BaselineConfig) -> int:
        return cfg.cnn_nets if self.convolutional else cfg.nets

    def gradient_baseline(
        self, theta0: torch.Tensor, metric: str, achieved: np.ndarray, cfg: BaselineConfig
    ) -> Baseline:
        """Adam (lr ``cfg.adam_lr``, batch 128) from ``theta0`` until each network's ``metric`` (a test
        metric, see :meth:`score_held_out`) reaches ``achieved`` (at most ``cfg.adam_steps`` steps),
        resolved to ``cfg.eval_every`` steps (:func:`~gpt_params.tasks.batched.steps_to_match`)."""
        from gpt_params.tasks.batched import steps_to_match

        steps, curve = steps_to_match(
            self, theta0, "adam", cfg.adam_lr, cfg.adam_steps, {metric: achieved},
            resolution=cfg.eval_every, coarse=cfg.coarse_every, seed=cfg.seed,
        )  # fmt: skip
        return Baseline(
            name=f"Adam lr {cfg.adam_lr:g}, batch 128",
            steps=steps[metric],
            budget=cfg.adam_steps,
            xlabel="Adam steps (batch 128)",
            curves={f"Adam, lr {cfg.adam_lr:g}": (curve.steps, np.median(curve.metrics[metric], 1))},
        )

    @cached_property
    def data(self) -> Splits:
        """Train / val / test tensors, loaded on first use."""
        return self._data_loader()

    def logits(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool) -> torch.Tensor:
        """Logits ``(B, C, N)`` of the B nets in ``params`` (name -> ``(B, *shape)``) on ``x``:
        ``(N, ...)`` shared by all nets, or ``(B, N, ...)`` when ``shared`` is False."""
        if self._fast_logits is not None:
            return self._fast_logits(params, x, shared)
        return self.functional(in_dims_x=None if shared else 0)(params, x).transpose(1, 2)

    def probe_inputs(self, bank: torch.Tensor, n: int, seed: int) -> torch.Tensor:
        """``n`` train-split inputs drawn with ``seed`` (their labels are not used)."""
        x = self.data.x["train"]
        if n > len(x):
            raise ValueError(f"{n} probe inputs asked for; the train split has {len(x)}")
        return x[_probe_pick(len(x), n, seed)].clone()

    def probe_gradient(self, theta: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
        """The gradient ``(B, D)`` of the mean cross-entropy of each network ``theta`` ``(B, D)`` on ``n``
        train-split examples drawn with ``seed`` (the first ``n`` of :meth:`probe_inputs`' permutation)."""
        data = self.data_on(theta.device)
        x, y = data.x["train"], data.y["train"]
        if not 0 < n <= len(x):
            raise ValueError(f"{n} probe examples asked for; the train split has {len(x)}")
        pick = _probe_pick(len(x), n, seed).to(x.device)
        with torch.enable_grad():
            theta = theta.detach().float().requires_grad_(True)
            logits = self.logits(self.layout.unflatten(theta), x[pick], shared=True)  # (B, C, n)
            loss = F.cross_entropy(logits, y[pick].expand(theta.shape[0], n), reduction="sum") / n
            (grad,) = torch.autograd.grad(loss, theta)
        return grad  # (B, D): row b is d mean_n CE(net b) / d theta_b

    def outputs(self, theta: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
        return self.logits(self.layout.unflatten(theta), probes, shared=True).transpose(1, 2)  # (B, S, C)

    def data_on(self, device: torch.device | str) -> Splits:
        """The splits on ``device`` (copied there once, then kept)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.data
        cache = self.__dict__.setdefault("_data_by_device", {})
        if device not in cache:
            d = self.data
            cache[device] = Splits(
                {k: v.to(device) for k, v in d.x.items()}, {k: v.to(device) for k, v in d.y.items()}
            )
        return cache[device]

    @torch.no_grad()
    def evaluate(
        self, theta: torch.Tensor, splits: tuple[str, ...] = SPLITS, train_examples: int | None = None
    ) -> dict[str, np.ndarray]:
        """Mean cross-entropy and error rate of each net in ``theta`` ``(B, D)`` on whole splits (the
        train split's first ``train_examples`` only, if given), computed on ``theta``'s device."""
        self.layout.check_vector(theta)
        theta = theta.reshape(-1, self.layout.numel).float()
        data = self.data_on(theta.device)
        out: dict[str, np.ndarray] = {}
        for split in splits:
            x, y = data.x[split], data.y[split]
            if split == "train" and train_examples is not None:
                x, y = x[:train_examples], y[:train_examples]
            n_chunk = min(len(y), self.eval_chunk)
            b_chunk = max(1, EVAL_BUDGET // (n_chunk * self._activations))
            loss_sum = torch.zeros(len(theta), device=theta.device)
            wrong = torch.zeros(len(theta), device=theta.device)
            for b0 in range(0, len(theta), b_chunk):
                params = self.layout.unflatten(theta[b0 : b0 + b_chunk])  # name -> (b, *shape)
                for n0 in range(0, len(y), n_chunk):
                    logits = self.logits(params, x[n0 : n0 + n_chunk], shared=True)  # (b, C, n)
                    yy = y[n0 : n0 + n_chunk].expand(len(logits), -1)  # (b, n)
                    loss_sum[b0 : b0 + b_chunk] += F.cross_entropy(logits, yy, reduction="none").sum(1)
                    # max(1).indices is argmax(1) (first maximum on ties) without its slow strided path
                    wrong[b0 : b0 + b_chunk] += (logits.max(1).indices != yy).sum(1)
            out[f"{split}_loss"] = (loss_sum / len(y)).cpu().numpy()
            out[f"{split}_error"] = (wrong / len(y)).cpu().numpy()
        return out

    def evaluate_only(self, theta: torch.Tensor, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Only the data splits ``names`` need."""
        out = self.evaluate(
            theta, splits=tuple(s for s in SPLITS if {f"{s}_loss", f"{s}_error"} & set(names))
        )
        return {m: out[m] for m in names if m in out}


MEMBER_MODULES = (nn.Linear, nn.ReLU, nn.Flatten, nn.Sequential, MLP)  # what an MLP family member is built of


def mlp_member_of(family: str, n_in: int, params, n_out: int = 10) -> tuple[int, ...]:
    """The hidden widths of the MLP ``params`` (a module, a state dict, or a list of them, all one
    member), checked to be a member of ``family`` (``n_in`` -> h1 (-> h2) -> ``n_out``, ReLU)."""
    what = (
        f"members of {family} are ReLU MLPs {n_in} -> h1 (-> h2) -> {n_out} built of Linear, ReLU and Flatten"
    )
    if isinstance(params, (list, tuple)) and params:
        found = {mlp_member_of(family, n_in, p, n_out) for p in params}
        if len(found) > 1:
            raise TaskError(f"one call updates one member of {family}; got {sorted(found)}")
        return found.pop()
    if isinstance(params, nn.Module):
        other = [type(m).__name__ for m in params.modules() if not isinstance(m, MEMBER_MODULES)]
        if other:
            raise TaskError(f"a {other[0]} is not part of the {family} family: {what}")
        tensors = [p for _, p in params.named_parameters()]
    elif isinstance(params, Mapping):
        tensors = [v for v in params.values() if torch.is_tensor(v)]
    else:
        raise TaskError(
            f"a flat vector does not say which member of {family} it is; name it with hidden=(...) ({what})"
        )
    weights = [t for t in tensors if t.dim() == 2]
    if len(weights) != len(tensors) // 2 or len(weights) < 2 or any(t.dim() > 2 for t in tensors):
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise TaskError(
            f"tensors of shapes {shapes or 'none'} are not a member of the {family} family: {what}"
        )
    if weights[0].shape[1] != n_in or weights[-1].shape[0] != n_out:
        raise TaskError(
            f"a net {weights[0].shape[1]} -> ... -> {weights[-1].shape[0]} is not a member of the {family} family: {what}"
        )
    return mlp_hidden(family, tuple(int(w.shape[0]) for w in weights[:-1]))


def _probe_pick(size: int, n: int, seed: int) -> torch.Tensor:
    """The first ``n`` of a ``seed``-ed permutation of ``size`` train-split indices: the examples that
    :meth:`SupervisedTask.probe_inputs` and :meth:`SupervisedTask.probe_gradient` share."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n]


# ``gpt-params harvest --architectures mixed`` over an MLP family: each cohort draws one member, with
# one hidden layer (probability 1/2) or two, each width log-uniform on [4, 256] and rounded (or, with
# ``--width-power P``, with density proportional to width^-P there: P = 1 is log-uniform). Members
# held out of every such zoo are redrawn: the one-layer widths HELD_OUT_WIDTHS (G.pt's 784-10-10
# among them) and the two-layer shapes HELD_OUT_SHAPES, so they test architectures no zoo held.
MIXED_WIDTHS = (4, 256)
HELD_OUT_WIDTHS = (10, 24, 48, 96, 192)
HELD_OUT_SHAPES = ((32, 16), (64, 64))


def draw_mlp_member(rng: np.random.Generator, width_power: float = 1.0) -> tuple[int, ...]:
    """One member of the ``--architectures mixed`` distribution (hidden widths), each width drawn with
    density proportional to width^-``width_power`` on ``MIXED_WIDTHS`` (1: log-uniform)."""
    low, high = MIXED_WIDTHS

    def width() -> int:  # inverse CDF of the power law; log-uniform draws as they always were
        if width_power == 1:
            w = np.exp(rng.uniform(np.log(low), np.log(high)))
        else:
            a = 1.0 - width_power
            w = (low**a + rng.random() * (high**a - low**a)) ** (1.0 / a)
        return int(round(float(w)))

    while True:
        layers = 1 if rng.random() < 0.5 else 2
        hidden = tuple(width() for _ in range(layers))
        held = hidden[0] in HELD_OUT_WIDTHS if layers == 1 else hidden in HELD_OUT_SHAPES
        if not held:
            return hidden


def mlp_family(n_in: int, n_out: int = 10) -> dict[str, Role]:
    """The roles of an MLP family's tensors (see :class:`~gpt_params.layout.Role`): first-layer weights
    and biases, weights and biases between hidden layers, output weights and output bias."""
    return {
        "in_weight": Role("unit", n_in),
        "in_bias": Role("unit", 1),
        "mid_weight": Role("edge", 1),
        "mid_bias": Role("unit", 1),
        "out_weight": Role("unit", n_out, axis=1),
        "out_bias": Role("rest", n_out),
    }


def mlp_roles(n_hidden_layers: int) -> dict[str, str]:
    """Tensor name -> role in a member with ``n_hidden_layers`` hidden layers."""
    last = n_hidden_layers + 1
    roles = {}
    for i in range(1, last + 1):
        kind = "in" if i == 1 else "out" if i == last else "mid"
        roles[f"fc{i}.weight"], roles[f"fc{i}.bias"] = f"{kind}_weight", f"{kind}_bias"
    return roles


def _mlp_symmetry(hidden: Sequence[int]) -> tuple[PermGroup, ...]:
    """Hidden layer i's units index the rows of ``fc{i}`` and the columns of ``fc{i+1}``."""
    return tuple(
        PermGroup(h, ((f"fc{i}.weight", 0), (f"fc{i}.bias", 0), (f"fc{i + 1}.weight", 1)))
        for i, h in enumerate(hidden, start=1)
    )


def _cnn_symmetry() -> tuple[PermGroup, ...]:
    return (
        PermGroup(16, (("conv1.weight", 0), ("conv2.weight", 1))),
        PermGroup(32, (("conv2.weight", 0), ("fc.weight", 1))),
    )


def _mlp_task(
    family: str, n_in: int, hidden: tuple[int, ...], default: tuple[int, ...], loader: Callable[[], Splits],
    data: Splits | None, factory: Callable[..., SupervisedTask],
) -> SupervisedTask:  # fmt: skip
    return SupervisedTask(
        family,
        lambda: MLP(n_in, hidden, 10),
        _mlp_symmetry(hidden),
        loader,
        activations_per_example=2 * (sum(hidden) + 10),
        data=data,
        fast_logits=mlp_logits,
        options={} if hidden == default else {"hidden": list(hidden)},
        family=mlp_family(n_in),
        roles=mlp_roles(len(hidden)),
        fan_in={f"fc{i}.{p}": w for i, w in enumerate((n_in, *hidden), start=1) for p in ("weight", "bias")},
        member_factory=factory,
    )


MNIST_MLP_HIDDEN = (10,)  # G.pt's 784-10-10
DIGITS_MLP_HIDDEN = (16,)


def make_mnist_mlp(
    data_dir: str | None = None,
    download: bool = False,
    data: Splits | None = None,
    hidden: int | Sequence[int] = MNIST_MLP_HIDDEN,
) -> SupervisedTask:
    """The family of MNIST MLPs 784 -> h1 (-> h2) -> 10; ``hidden`` picks the member."""
    from gpt_params.tasks import data as d

    loader = (lambda: d.mnist_torchvision(data_dir, download)) if data_dir else d.mnist5k
    member = mlp_hidden("mnist-mlp", hidden)
    factory = functools.partial(make_mnist_mlp, data_dir, download)
    return _mlp_task("mnist-mlp", 784, member, MNIST_MLP_HIDDEN, loader, data, factory)


def make_mnist_cnn(
    data_dir: str | None = None, download: bool = False, data: Splits | None = None
) -> SupervisedTask:
    from gpt_params.tasks import data as d

    return SupervisedTask(
        "mnist-cnn",
        lambda: CNN(1),
        _cnn_symmetry(),
        (lambda: d.mnist_torchvision(data_dir, download)) if data_dir else d.mnist5k,
        activations_per_example=2 * (16 * 13 * 13 + 32 * 11 * 11),
        data=data,
        fast_logits=cnn_logits,
        eval_chunk=256,  # 1.7x faster than 4,096 on 2 cores (activations stay in cache)
        convolutional=True,
    )


def make_cifar10_cnn(
    data_dir: str | None = None, download: bool = False, data: Splits | None = None
) -> SupervisedTask:
    from gpt_params.errors import DataError
    from gpt_params.tasks import data as d

    def load() -> Splits:
        if data_dir is None:
            raise DataError(
                "cifar10-cnn needs --data-dir: torchvision's CIFAR-10 files or an ImageFolder tree of its images "
                "(none ship with the package)"
            )
        return d.cifar10(data_dir, download)

    return SupervisedTask(
        "cifar10-cnn",
        lambda: CNN(3),
        _cnn_symmetry(),
        load,
        activations_per_example=2 * (16 * 15 * 15 + 32 * 13 * 13),
        data=data,
        fast_logits=cnn_logits,
        eval_chunk=256,  # 1.7x faster than 4,096 on 2 cores (activations stay in cache)
        augment=flip_crop,
        convolutional=True,
    )


def make_digits_mlp(
    data_dir: str | None = None,
    download: bool = False,
    data: Splits | None = None,
    hidden: int | Sequence[int] = DIGITS_MLP_HIDDEN,
) -> SupervisedTask:
    """The family of scikit-learn digits MLPs 64 -> h1 (-> h2) -> 10; ``hidden`` picks the member."""
    from gpt_params.tasks import data as d

    if data_dir is not None:
        raise TaskError(
            f"digits-mlp uses scikit-learn's bundled digits; it takes no --data-dir (got {data_dir!r})"
        )
    hidden = mlp_hidden("digits-mlp", hidden)
    return _mlp_task("digits-mlp", 64, hidden, DIGITS_MLP_HIDDEN, d.sklearn_digits, data, make_digits_mlp)

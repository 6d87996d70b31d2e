"""Flat parameter layouts and hidden-unit permutation symmetries.

Dimension legend used across the package: B batch, D flat parameters, K checkpoints per run,
R runs, N data points, T tokens, E width.

A :class:`ParamLayout` fixes the names, shapes and order of a network's tensors, so a module and a
1-D vector of length ``D`` convert into each other without loss. A :class:`PermGroup` names the
tensor axes that index one hidden layer's units: permuting those units consistently on every
member axis leaves the network's function unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gpt_params.errors import LayoutError


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a network's parameters, in flattening order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise LayoutError(f"layout has {len(self.names)} names but {len(self.shapes)} shapes")
        if len(set(self.names)) != len(self.names):
            raise LayoutError(f"layout names must be unique, got {list(self.names)}")

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamLayout:
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """Start index of each tensor in the flat vector."""
        out, acc = [], 0
        for size in self.sizes:
            out.append(acc)
            acc += size
        return tuple(out)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def slice_of(self, name: str) -> slice:
        i = self.index(name)
        return slice(self.offsets[i], self.offsets[i] + self.sizes[i])

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise LayoutError(f"unknown tensor {name!r}; layout has {list(self.names)}") from None

    # -- conversions -----------------------------------------------------------------------------

    def flatten(self, params: nn.Module | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Module or state dict -> flat vector ``(D,)``, in layout order."""
        tensors = dict(params.named_parameters()) if isinstance(params, nn.Module) else dict(params)
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise LayoutError(f"parameters {missing} are missing; expected tensors {list(self.names)}")
        parts = []
        for name, shape in zip(self.names, self.shapes, strict=True):
            t = tensors[name]
            if tuple(t.shape) != shape:
                raise LayoutError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
            parts.append(t.detach().reshape(-1))
        return torch.cat(parts)

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat ``(..., D)`` -> ``{name: (..., *shape)}`` views (no copy)."""
        self.check_vector(theta)
        lead = theta.shape[:-1]
        out = {}
        for name, shape, off, size in zip(self.names, self.shapes, self.offsets, self.sizes, strict=True):
            out[name] = theta[..., off : off + size].reshape(*lead, *shape)
        return out

    def load_into(self, module: nn.Module, theta: torch.Tensor) -> nn.Module:
        """Copy a flat ``(D,)`` vector into ``module``'s parameters in place and return it."""
        if theta.dim() != 1:
            raise LayoutError(f"expected one flat vector of shape ({self.numel},), got {tuple(theta.shape)}")
        own = dict(module.named_parameters())
        with torch.no_grad():
            for name, t in self.unflatten(theta).items():
                if name not in own:
                    raise LayoutError(f"module has no parameter {name!r}; it has {list(own)}")
                own[name].copy_(t)
        return module

    def check_vector(self, theta: torch.Tensor) -> None:
        if theta.shape[-1:] != (self.numel,):
            raise LayoutError(
                f"parameter vector has trailing size {tuple(theta.shape[-1:])}, expected {self.numel} "
                f"(layout {self.describe()})"
            )

    def describe(self) -> str:
        return ", ".join(f"{n}{list(s)}" for n, s in zip(self.names, self.shapes, strict=True))

    def describe_shapes(self) -> str:
        """``"fc1.weight (10, 784), fc1.bias (10,), ..."``."""
        return describe_named(zip(self.names, self.shapes, strict=True))

    def match(self, named: Sequence[tuple[str, torch.Tensor]], expected: str | None = None) -> list[str]:
        """The names in ``named`` (a module's or state dict's ``(name, tensor)`` pairs, in order) that hold
        this layout's tensors, in layout order.

        By name when every layout name is there with its shape (the task's own module, an SB3 policy
        with its value network beside the actor); otherwise by position when the tensors have the
        layout's shapes in its order (an ``nn.Sequential``, a class with other names), given as they
        come or in module order (a safetensors file stores its names sorted: ``1.bias`` before
        ``1.weight`` and ``10.weight`` before ``2.weight``). Anything else is a :class:`LayoutError`
        naming ``expected`` (default: the layout) and what was given.
        """
        given = {n: tuple(t.shape) for n, t in named}
        if all(given.get(n) == s for n, s in zip(self.names, self.shapes, strict=True)):
            return list(self.names)
        for order in ([n for n, _ in named], sorted(given, key=_module_order)):
            if [given[n] for n in order] == list(self.shapes):
                return order
        got = describe_named((n, tuple(t.shape)) for n, t in named) or "no tensors"
        raise LayoutError(f"expected {expected or self.describe_shapes()}, got {got}")

    # -- serialisation ---------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"names": list(self.names), "shapes": [list(s) for s in self.shapes]})

    @classmethod
    def from_json(cls, text: str) -> ParamLayout:
        d = json.loads(text)
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]))


def _module_order(name: str) -> tuple:
    """Sort key restoring the order PyTorch registers parameters in, for the usual names: module paths
    with numeric parts compared as numbers, and a layer's ``weight`` before its ``bias``."""
    *path, leaf = name.split(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path)
    return parts, {"weight": 0, "bias": 1}.get(leaf, 2), leaf


def describe_named(named) -> str:
    """``[("fc1.weight", (10, 784)), ...]`` -> ``"fc1.weight (10, 784), ..."``."""
    return ", ".join(f"{n} {tuple(s)}" for n, s in named)


@dataclass(frozen=True)
class PermGroup:
    """One hidden layer's units: ``members`` are ``(tensor name, axis)`` pairs indexed by unit."""

    size: int
    members: tuple[tuple[str, int], ...]


def permutation_index(
    layout: ParamLayout, groups: Sequence[PermGroup], perms: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Index ``(B, D)`` such that ``theta.gather(-1, index)`` permutes hidden units.

    ``perms[g]`` is ``(B, groups[g].size)``: a permutation of that layer's units per sample. Two
    groups may touch the same tensor on different axes (a weight between two hidden layers), so the
    index is built by permuting an ``arange`` through every member axis in turn.
    """
    if len(perms) != len(groups):
        raise LayoutError(f"got {len(perms)} permutations for {len(groups)} symmetry groups")
    batch = perms[0].shape[0] if perms else 1
    idx = torch.arange(layout.numel).expand(batch, -1)  # (B, D)
    views = layout.unflatten(idx)  # name -> (B, *shape)
    for group, perm in zip(groups, perms, strict=True):
        if perm.shape != (batch, group.size):
            raise LayoutError(f"permutation has shape {tuple(perm.shape)}, expected {(batch, group.size)}")
        for name, axis in group.members:
            t = views[name]
            ax = axis + 1  # skip the batch dim
            shape = [batch] + [1] * (t.dim() - 1)
            shape[ax] = group.size
            gather_idx = perm.reshape(shape).expand_as(t)
            views[name] = t.gather(ax, gather_idx)
    return torch.cat([views[n].reshape(batch, -1) for n in layout.names], dim=1)


def permute(
    theta: torch.Tensor, layout: ParamLayout, groups: Sequence[PermGroup], perms: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Apply per-sample hidden-unit permutations to ``theta`` ``(B, D)``; returns a new ``(B, D)``."""
    return theta.gather(-1, permutation_index(layout, groups, perms))


def random_perms(
    groups: Sequence[PermGroup], batch: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Uniformly random unit permutations, one ``(B, size)`` tensor per group."""
    return [torch.argsort(torch.rand(batch, g.size, generator=generator), dim=1) for g in groups]


# -- architecture families: tensors by role --------------------------------------------------------

ROLE_PLACEMENTS = ("unit", "edge", "rest")


@dataclass(frozen=True)
class Role:
    """How one kind of tensor of an architecture family (an MLP's first-layer weights, its output bias,
    ...) enters the tokens, whatever the member's widths:

    * ``unit``: the tensor is indexed by one hidden layer's units on ``axis``; each unit's slice
      (``features`` values) joins that unit's token;
    * ``edge``: the tensor connects two hidden layers; each entry (``features`` values, 9 for a 3x3
      kernel) is pooled into both units' tokens and decoded from the pair;
    * ``rest``: a tensor of fixed size ``features`` that no hidden layer indexes gets a token of its own.
    """

    placement: str
    features: int
    axis: int = 0  # ``unit``: the axis indexed by the units

    def __post_init__(self) -> None:
        if self.placement not in ROLE_PLACEMENTS:
            raise LayoutError(f"unknown role placement {self.placement!r}; expected one of {ROLE_PLACEMENTS}")


@dataclass
class RolePlan:
    """Where one member's tensors sit in its flat vector, by role: what :class:`RoleTokenizer` needs to
    tokenise that member. Built by :func:`role_plan`; moved between devices with :meth:`to`."""

    numel: int
    sizes: list[int]  # units per hidden layer
    units: list[list[tuple[str, torch.Tensor]]]  # per hidden layer: (role, flat index (n_g, F))
    edges: list[tuple[str, int, int, torch.Tensor]]  # (role, layer a, layer b, flat index (n_a, n_b, F))
    rest: list[tuple[str, torch.Tensor]]  # (role, flat index (F,))
    role_id: torch.Tensor  # (D,) index into the family's role list of each coordinate

    def to(self, device: torch.device | str) -> RolePlan:
        return RolePlan(
            self.numel,
            self.sizes,
            [[(r, i.to(device)) for r, i in parts] for parts in self.units],
            [(r, a, b, i.to(device)) for r, a, b, i in self.edges],
            [(r, i.to(device)) for r, i in self.rest],
            self.role_id.to(device),
        )


def role_plan(
    layout: ParamLayout, groups: Sequence[PermGroup], roles: dict[str, str], spec: dict[str, Role]
) -> RolePlan:
    """The :class:`RolePlan` of a member with ``layout`` and hidden layers ``groups`` whose tensors play
    ``roles`` (tensor name -> role name of the family ``spec``); a :class:`LayoutError` naming the tensor
    where the member does not fit the family."""
    owners: dict[str, list[tuple[int, int]]] = {}
    for g, group in enumerate(groups):
        for name, axis in group.members:
            owners.setdefault(name, []).append((g, axis))
    names = list(spec)
    units: list[list[tuple[str, torch.Tensor]]] = [[] for _ in groups]
    edges, rest = [], []
    role_id = torch.empty(layout.numel, dtype=torch.long)
    flat = layout.unflatten(torch.arange(layout.numel))
    for name in layout.names:
        if name not in roles or roles[name] not in spec:
            raise LayoutError(f"tensor {name!r} has no role of the family ({', '.join(names)})")
        role, r = roles[name], spec[roles[name]]
        role_id[layout.slice_of(name)] = names.index(role)
        own = owners.get(name, [])
        if r.placement == "unit":
            g = [g for g, axis in own if axis == r.axis]
            if len(own) != 1 or not g:
                raise LayoutError(
                    f"tensor {name!r} ({role}) must be indexed by one hidden layer on axis {r.axis}"
                )
            idx = flat[name].movedim(r.axis, 0).reshape(groups[g[0]].size, -1)  # (n_g, F)
            units[g[0]].append((role, idx))
        elif r.placement == "edge":
            if len(own) != 2:
                raise LayoutError(f"tensor {name!r} ({role}) must connect two hidden layers")
            (ga, axa), (gb, axb) = own
            idx = flat[name].movedim((axa, axb), (0, 1))
            idx = idx.reshape(idx.shape[0], idx.shape[1], -1)  # (n_a, n_b, F)
            edges.append((role, ga, gb, idx))
        else:
            if own:
                raise LayoutError(
                    f"tensor {name!r} ({role}) is indexed by a hidden layer; a rest role cannot be"
                )
            idx = flat[name].reshape(-1)  # (F,)
            rest.append((role, idx))
        if idx.shape[-1] != r.features:
            raise LayoutError(
                f"tensor {name!r} ({role}) gives {idx.shape[-1]} values per token slot, the family's "
                f"{role} has {r.features}"
            )
    return RolePlan(layout.numel, [g.size for g in groups], units, edges, rest, role_id)

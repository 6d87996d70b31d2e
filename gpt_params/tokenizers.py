"""Parameter tokenizers: flat vectors ``(B, D)`` <-> token sequences ``(B, T, E)``.

Both tokenizers read two vectors per network, the starting parameters ``theta_start`` and the noisy
future parameters ``theta_noisy``, and decode the tokens into a *change* ``(B, D)`` that the model
adds to ``theta_start`` (its zero-initialised decoders make an untrained model return the start).

* :class:`ChunkTokenizer`: G.pt's scheme. Each tensor is cut into chunks of at most ``chunk`` values;
  every token position has its own projections and a learned position embedding.
* :class:`NeuronTokenizer`: one token per hidden unit, built from the task's permutation groups. A
  unit's token carries the tensor slices indexed by that unit (incoming weights and bias, outgoing
  weights where the next layer is not hidden); one projection per layer is shared by its units and
  there is no position embedding among them. Weights *between* two hidden layers belong to both
  units, so they are pooled into both tokens on the way in and decoded per entry from the pair of
  tokens on the way out. The model is therefore equivariant to hidden-unit permutations by
  construction. Tensors touched by no group (output biases, ...) become chunk tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gpt_params.layout import ParamLayout, PermGroup, Role, RolePlan

MESSAGE_NORMS = ("mean", "sqrt")  # RoleTokenizer: divide a message summed over n units by n or sqrt(n)


def _unit_index(layout: ParamLayout, name: str, axis: int) -> torch.Tensor:
    """Flat indices of tensor ``name`` with ``axis`` moved first: ``(units, features)``."""
    idx = layout.unflatten(torch.arange(layout.numel))[name]
    return idx.movedim(axis, 0).reshape(idx.shape[axis], -1)


def _chunks(layout: ParamLayout, names: list[str], chunk: int) -> list[torch.Tensor]:
    """Flat index ranges, at most ``chunk`` long, covering ``names`` tensor by tensor."""
    out = []
    for name in names:
        s = layout.slice_of(name)
        for start in range(s.start, s.stop, chunk):
            out.append(torch.arange(start, min(start + chunk, s.stop)))
    return out


def edge_messages(
    e: torch.Tensor, va: torch.Tensor, vb: torch.Tensor, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Messages along the weights between two hidden layers: ``e`` (B, n_a, n_b, W) the weights' features,
    ``va`` (B, n_a, W) and ``vb`` (B, n_b, W) the values each layer's units send. Returns what layer a
    receives, ``sum_b e_ab * vb_b``, and what layer b receives, ``sum_a e_ab * va_a``, each divided by the
    number of senders (``norm="mean"``) or, with ``"sqrt"``, the values centred over their layer and the sum
    divided by its square root: a sum of terms of random sign, like a gradient backpropagated through those
    weights, at one scale across widths (the layer's common part reaches its units pooled already)."""
    n_a, n_b = e.shape[1], e.shape[2]
    if norm == "sqrt":
        va, vb = va - va.mean(1, keepdim=True), vb - vb.mean(1, keepdim=True)
        div_a, div_b = math.sqrt(n_b), math.sqrt(n_a)
    else:
        div_a, div_b = n_b, n_a
    to_a = torch.einsum("xabw,xbw->xaw", e, vb) / div_a  # (B, n_a, W)
    to_b = torch.einsum("xabw,xaw->xbw", e, va) / div_b  # (B, n_b, W)
    return to_a, to_b


class _PerTokenLinear(nn.Module):
    """T independent linear maps ``(B, T, I) -> (B, T, O)``, inputs zero-padded to a common width."""

    def __init__(self, n_tokens: int, d_in: int, d_out: int, zero: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_tokens, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(n_tokens, d_out))
        if zero:
            nn.init.zeros_(self.weight)
        else:
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,tio->bto", x, self.weight) + self.bias


class ChunkTokenizer(nn.Module):
    """G.pt's tokenizer over the whole vector, or over ``names`` only when given."""

    def __init__(
        self, layout: ParamLayout, width: int, chunk: int = 256, names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.chunk = chunk
        pieces = _chunks(layout, list(layout.names) if names is None else names, chunk)
        pad = torch.full((len(pieces), chunk), -1, dtype=torch.long)
        for t, p in enumerate(pieces):
            pad[t, : len(p)] = p
        self.register_buffer("index", pad, persistent=False)  # (T, M), -1 = padding
        self.n_tokens = len(pieces)
        self.embed = _PerTokenLinear(self.n_tokens, 2 * chunk, width)
        self.pos = nn.Parameter(torch.randn(self.n_tokens, width) * 0.02)
        self.head = _PerTokenLinear(self.n_tokens, width, chunk, zero=True)

    def _gather(self, theta: torch.Tensor) -> torch.Tensor:
        valid = self.index >= 0
        return theta[:, self.index.clamp(min=0)] * valid  # (B, T, M), padding zeroed

    def encode(self, theta_start: torch.Tensor, theta_noisy: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self._gather(theta_start), self._gather(theta_noisy)], -1)  # (B, T, 2M)
        return self.embed(x) + self.pos  # (B, T, E)

    def decode(self, h: torch.Tensor, theta_start: torch.Tensor, theta_noisy: torch.Tensor) -> torch.Tensor:
        """The change ``(B, D)`` predicted from tokens ``h`` ``(B, T, E)``."""
        out = theta_start.new_zeros(theta_start.shape)
        self.decode_into(h, out)
        return out

    def decode_into(self, h: torch.Tensor, out: torch.Tensor) -> None:
        delta = self.head(h)  # (B, T, M)
        valid = self.index >= 0
        out[:, self.index[valid]] = delta[:, valid].to(out.dtype)


class NeuronTokenizer(nn.Module):
    """Permutation-equivariant tokens: one per hidden unit, plus chunk tokens for the rest."""

    def __init__(
        self,
        layout: ParamLayout,
        groups: tuple[PermGroup, ...],
        width: int,
        chunk: int = 256,
        edge_width: int = 64,
    ) -> None:
        super().__init__()
        owners: dict[str, list[tuple[int, int]]] = {}
        for g, group in enumerate(groups):
            for name, axis in group.members:
                owners.setdefault(name, []).append((g, axis))
        self.sizes = [g.size for g in groups]
        unit_idx: list[list[torch.Tensor]] = [[] for _ in groups]
        self.edges: list[tuple[int, int]] = []  # (group a: tensor axis 1 side, group b: axis 0 side)
        edge_idx = []
        for name, own in owners.items():
            if len(own) == 1:
                g, axis = own[0]
                unit_idx[g].append(_unit_index(layout, name, axis))
            elif len(own) == 2:
                (ga, axa), (gb, axb) = own
                idx = layout.unflatten(torch.arange(layout.numel))[name]
                idx = idx.movedim((axa, axb), (0, 1)).reshape(
                    idx.shape[axa], idx.shape[axb], -1
                )  # (na, nb, F)
                self.edges.append((ga, gb))
                edge_idx.append(idx)
            else:
                raise ValueError(
                    f"tensor {name!r} is indexed by {len(own)} permutation groups; at most 2 supported"
                )
        feats = []
        for g, parts in enumerate(unit_idx):
            idx = torch.cat(parts, 1) if parts else torch.zeros(self.sizes[g], 0, dtype=torch.long)
            self.register_buffer(f"unit_index_{g}", idx, persistent=False)  # (n_g, F_g)
            feats.append(idx.shape[1])
        for e, idx in enumerate(edge_idx):
            self.register_buffer(f"edge_index_{e}", idx, persistent=False)  # (n_a, n_b, F_e)
        self.embed = nn.ModuleList(nn.Linear(2 * f, width) for f in feats)
        self.layer_emb = nn.Parameter(torch.randn(len(groups), width) * 0.02)
        self.head = nn.ModuleList(nn.Linear(width, f) for f in feats)
        for h in self.head:
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)
        self.edge_in = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * idx.shape[-1], edge_width), nn.GELU(), nn.Linear(edge_width, width))
            for idx in edge_idx
        )
        self.edge_a = nn.ModuleList(nn.Linear(width, edge_width) for _ in edge_idx)
        self.edge_b = nn.ModuleList(nn.Linear(width, edge_width) for _ in edge_idx)
        self.edge_x = nn.ModuleList(nn.Linear(2 * idx.shape[-1], edge_width) for idx in edge_idx)
        self.edge_out = nn.ModuleList(nn.Linear(edge_width, idx.shape[-1]) for idx in edge_idx)
        for h in self.edge_out:
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)
        covered = set(owners)
        rest = [n for n in layout.names if n not in covered]
        self.rest = ChunkTokenizer(layout, width, chunk, names=rest) if rest else None
        self.n_tokens = sum(self.sizes) + (self.rest.n_tokens if self.rest else 0)

    def _unit_index(self, g: int) -> torch.Tensor:
        return getattr(self, f"unit_index_{g}")

    def _edge_index(self, e: int) -> torch.Tensor:
        return getattr(self, f"edge_index_{e}")

    def _edge_inputs(self, e: int, theta_start: torch.Tensor, theta_noisy: torch.Tensor) -> torch.Tensor:
        idx = self._edge_index(e)
        return torch.cat([theta_start[:, idx], theta_noisy[:, idx]], -1)  # (B, n_a, n_b, 2F)

    def encode(self, theta_start: torch.Tensor, theta_noisy: torch.Tensor) -> torch.Tensor:
        units = []
        for g, emb in enumerate(self.embed):
            idx = self._unit_index(g)
            x = torch.cat([theta_start[:, idx], theta_noisy[:, idx]], -1)  # (B, n_g, 2F_g)
            units.append(emb(x) + self.layer_emb[g])  # (B, n_g, E)
        for e, (ga, gb) in enumerate(self.edges):
            # edge_in = Linear -> GELU -> Linear; the last map is affine, so pooling the (B, n_a, n_b, W)
            # hidden edges before it equals pooling its (B, n_a, n_b, E) outputs, at W/E of the cost
            first, act, last = self.edge_in[e]
            hidden = act(first(self._edge_inputs(e, theta_start, theta_noisy)))  # (B, n_a, n_b, W)
            units[ga] = units[ga] + last(hidden.mean(2))
            units[gb] = units[gb] + last(hidden.mean(1))
        tokens = torch.cat(units, 1)  # (B, sum n_g, E)
        if self.rest is not None:
            tokens = torch.cat([tokens, self.rest.encode(theta_start, theta_noisy)], 1)
        return tokens

    def decode(self, h: torch.Tensor, theta_start: torch.Tensor, theta_noisy: torch.Tensor) -> torch.Tensor:
        """The change ``(B, D)`` predicted from tokens ``h`` ``(B, T, E)``."""
        out = theta_start.new_zeros(theta_start.shape)
        offsets = [0]
        for n in self.sizes:
            offsets.append(offsets[-1] + n)
        hs = [h[:, offsets[g] : offsets[g + 1]] for g in range(len(self.sizes))]
        for g, head in enumerate(self.head):
            idx = self._unit_index(g)
            if idx.shape[1]:
                out[:, idx] = head(hs[g]).to(out.dtype)  # (B, n_g, F_g)
        for e, (ga, gb) in enumerate(self.edges):
            a = self.edge_a[e](hs[ga])[:, :, None]  # (B, n_a, 1, W)
            b = self.edge_b[e](hs[gb])[:, None]  # (B, 1, n_b, W)
            x = self.edge_x[e](self._edge_inputs(e, theta_start, theta_noisy))  # (B, n_a, n_b, W)
            out[:, self._edge_index(e)] = self.edge_out[e](torch.nn.functional.gelu(a + b + x)).to(out.dtype)
        if self.rest is not None:
            self.rest.decode_into(h[:, offsets[-1] :], out)
        return out


class RoleTokenizer(nn.Module):
    """The neuron tokens of :class:`NeuronTokenizer` with projections shared by tensor *role*, not by
    tensor: nothing is sized by a member's widths, so one tokenizer serves every member of a family
    (any number of units per hidden layer, up to ``max_layers`` hidden layers). A member's unit token
    is the sum of its roles' projections (a linear map of the concatenated slices, as in
    :class:`NeuronTokenizer`) plus an embedding of the hidden layer's position. Equivariant to
    hidden-unit permutations by construction.

    The weights between two hidden layers reach each unit's token pooled over the other layer. With
    ``messages`` each unit also receives the other layer's unit tokens weighted by the connecting
    edges' features, ``sum_b e_ab * v(u_b)`` normalised by ``message_norm``: so a first-layer unit learns what the units it feeds do
    (in a one-layer member its own output weights say so), not only how strongly it connects. ``message_norm``
    is :func:`edge_messages`' ``norm``: ``"mean"`` (exports before it) or ``"sqrt"`` (what training picks).

    ``inputs=3``: every projection also reads the probe gradient (``theta_grad``, the training loss's
    gradient at ``theta_start`` on fixed examples, per role scaled to unit RMS), beside ``theta_start`` and
    ``theta_noisy``, so a unit's token says which way the data pulls it."""

    def __init__(
        self,
        spec: dict[str, Role],
        width: int,
        edge_width: int = 64,
        max_layers: int = 2,
        messages: bool = False,
        message_norm: str = "mean",
        edge_rank: int = 0,
        inputs: int = 2,
    ) -> None:
        super().__init__()
        if inputs not in (2, 3):
            raise ValueError(f"inputs {inputs}; expected 2 (start, noisy) or 3 (and a gradient)")
        self.inputs = inputs
        if message_norm not in MESSAGE_NORMS:
            raise ValueError(f"message_norm {message_norm!r}; expected one of {', '.join(MESSAGE_NORMS)}")
        self.message_norm = message_norm
        self.spec = dict(spec)
        unit = [n for n, r in spec.items() if r.placement == "unit"]
        edge = [n for n, r in spec.items() if r.placement == "edge"]
        rest = [n for n, r in spec.items() if r.placement == "rest"]
        f = {n: r.features for n, r in spec.items()}
        k = inputs  # vectors read per coordinate: theta_start, theta_noisy (and the probe gradient)
        self.embed = nn.ModuleDict({n: nn.Linear(k * f[n], width) for n in unit})
        self.head = nn.ModuleDict({n: nn.Linear(width, f[n]) for n in unit})
        self.layer_emb = nn.Parameter(torch.randn(max_layers, width) * 0.02)
        self.edge_in = nn.ModuleDict(
            {
                n: nn.Sequential(nn.Linear(k * f[n], edge_width), nn.GELU(), nn.Linear(edge_width, width))
                for n in edge
            }
        )
        self.edge_a = nn.ModuleDict({n: nn.Linear(width, edge_width) for n in edge})
        self.edge_b = nn.ModuleDict({n: nn.Linear(width, edge_width) for n in edge})
        self.edge_x = nn.ModuleDict({n: nn.Linear(k * f[n], edge_width) for n in edge})
        self.edge_out = nn.ModuleDict({n: nn.Linear(edge_width, f[n]) for n in edge})
        self.edge_rank = edge_rank
        if edge_rank:  # per edge role: a rank-K bilinear map of the two units' tokens, sum_k p_k(a) q_k(b)
            self.edge_p = nn.ModuleDict({n: nn.Linear(width, edge_rank * f[n]) for n in edge})
            self.edge_q = nn.ModuleDict({n: nn.Linear(width, edge_rank * f[n]) for n in edge})
            for h in self.edge_p.values():  # starts at zero, as the heads do
                nn.init.zeros_(h.weight)
                nn.init.zeros_(h.bias)
        self.messages = messages
        if messages:  # per edge role: each side's tokens into edge features, and the messages back out
            self.msg_v = nn.ModuleDict({n: nn.Linear(width, 2 * edge_width) for n in edge})
            self.msg_out = nn.ModuleDict({n: nn.Linear(edge_width, width) for n in edge})
        self.rest_embed = nn.ModuleDict({n: nn.Linear(k * f[n], width) for n in rest})
        self.rest_pos = nn.ParameterDict({n: nn.Parameter(torch.randn(width) * 0.02) for n in rest})
        self.rest_head = nn.ModuleDict({n: nn.Linear(width, f[n]) for n in rest})
        for h in [*self.head.values(), *self.edge_out.values(), *self.rest_head.values()]:
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)
        self.max_layers = max_layers

    def _reader(self, theta_start: torch.Tensor, theta_noisy: torch.Tensor, theta_grad: torch.Tensor | None):
        """``pair(idx)``: the slices ``idx`` of the vectors this tokenizer reads, concatenated ``(B, ..., kF)``."""
        if (theta_grad is not None) != (self.inputs == 3):
            raise ValueError(
                "this tokenizer reads a probe gradient; pass theta_grad="
                if self.inputs == 3
                else "theta_grad given to a tokenizer that reads none"
            )
        vectors = (theta_start, theta_noisy) if theta_grad is None else (theta_start, theta_noisy, theta_grad)
        return lambda idx: torch.cat([v[:, idx] for v in vectors], -1)

    def encode(
        self, theta_start: torch.Tensor, theta_noisy: torch.Tensor, plan: RolePlan,
        theta_grad: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Tokens ``(B, T, E)``: each hidden layer's units in order, then one token per rest tensor."""
        return self.encode_with_edges(theta_start, theta_noisy, plan, theta_grad)[0]

    def encode_with_edges(
        self, theta_start: torch.Tensor, theta_noisy: torch.Tensor, plan: RolePlan,
        theta_grad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[tuple[int, int, torch.Tensor]]]:  # fmt: skip
        """:meth:`encode`'s tokens and, per edge role, ``(layer a, layer b, features (B, n_a, n_b, W))``
        of the weights between the two layers (what :class:`~gpt_params.model.EdgeMessages` passes along).
        ``theta_grad`` ``(B, D)``: the probe gradient, for a tokenizer built with ``inputs=3``."""
        if len(plan.units) > self.max_layers:
            raise ValueError(
                f"a member with {len(plan.units)} hidden layers; this tokenizer takes {self.max_layers}"
            )
        pair = self._reader(theta_start, theta_noisy, theta_grad)

        units = []
        for g, parts in enumerate(plan.units):
            tok = self.layer_emb[g].expand(theta_start.shape[0], plan.sizes[g], -1)  # (B, n_g, E)
            for role, idx in parts:
                tok = tok + self.embed[role](pair(idx))  # (B, n_g, E)
            units.append(tok)
        own = list(units)  # each layer's tokens from its own units' parameters
        edges = []
        for role, ga, gb, idx in plan.edges:
            first, act, last = self.edge_in[role]
            hidden = act(first(pair(idx)))  # (B, n_a, n_b, W): pooled before the affine last map
            edges.append((ga, gb, hidden))
            units[ga] = units[ga] + last(hidden.mean(2))
            units[gb] = units[gb] + last(hidden.mean(1))
            if self.messages:
                va = self.msg_v[role](own[ga])[..., : hidden.shape[-1]]  # (B, n_a, W)
                vb = self.msg_v[role](own[gb])[..., hidden.shape[-1] :]  # (B, n_b, W)
                to_a, to_b = edge_messages(hidden, va, vb, self.message_norm)  # (B, n_a, W), (B, n_b, W)
                units[ga] = units[ga] + self.msg_out[role](to_a)
                units[gb] = units[gb] + self.msg_out[role](to_b)
        rest = [(self.rest_embed[role](pair(idx)) + self.rest_pos[role])[:, None] for role, idx in plan.rest]
        return torch.cat(units + rest, 1), edges

    def decode(
        self, h: torch.Tensor, theta_start: torch.Tensor, theta_noisy: torch.Tensor, plan: RolePlan,
        theta_grad: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """The change ``(B, D)`` predicted from tokens ``h`` ``(B, T, E)`` laid out as :meth:`encode`'s."""
        pair = self._reader(theta_start, theta_noisy, theta_grad)
        out = theta_start.new_zeros(theta_start.shape)
        hs, at = [], 0
        for n in plan.sizes:
            hs.append(h[:, at : at + n])
            at += n
        for g, parts in enumerate(plan.units):
            for role, idx in parts:
                out[:, idx] = self.head[role](hs[g]).to(out.dtype)  # (B, n_g, F)
        for role, ga, gb, idx in plan.edges:
            a = self.edge_a[role](hs[ga])[:, :, None]  # (B, n_a, 1, W)
            b = self.edge_b[role](hs[gb])[:, None]  # (B, 1, n_b, W)
            x = self.edge_x[role](pair(idx))  # (B, n_a, n_b, W)
            change = self.edge_out[role](torch.nn.functional.gelu(a + b + x))  # (B, n_a, n_b, F)
            if self.edge_rank:
                bsz, n_a, n_b, k = a.shape[0], hs[ga].shape[1], hs[gb].shape[1], self.edge_rank
                p = self.edge_p[role](hs[ga]).view(bsz, n_a, -1, k)  # (B, n_a, F, K)
                q = self.edge_q[role](hs[gb]).view(bsz, n_b, -1, k)  # (B, n_b, F, K)
                change = change + torch.einsum("bafk,bcfk->bacf", p, q) / math.sqrt(k)  # (B, n_a, n_b, F)
            out[:, idx] = change.to(out.dtype)
        for k, (role, idx) in enumerate(plan.rest):
            out[:, idx] = self.rest_head[role](h[:, at + k]).to(out.dtype)
        return out

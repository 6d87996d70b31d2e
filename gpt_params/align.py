"""Hidden-unit alignment (weight matching with the Hungarian method) and aligned distances.

Two networks that differ only by a permutation of hidden units compute the same function, so raw
parameter distances overstate how different they are. ``align`` permutes each candidate's units to
best match a reference, one symmetry group (hidden layer) at a time: a unit's features are the
tensor slices it indexes (incoming weights, bias, outgoing weights once the next layer is matched), and
``scipy.optimize.linear_sum_assignment`` picks the permutation with the least total squared distance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gpt_params.layout import ParamLayout, PermGroup, permute


def _unit_features(
    theta: torch.Tensor, layout: ParamLayout, group: PermGroup, skip: set[str]
) -> torch.Tensor:
    """``(B, D)`` -> ``(B, units, features)``: the unit's slices of every member tensor not in ``skip``."""
    views = layout.unflatten(theta)
    parts = [
        views[name].movedim(axis + 1, 1).reshape(len(theta), group.size, -1)
        for name, axis in group.members
        if name not in skip
    ]
    return torch.cat(parts, -1)


def align(
    reference: torch.Tensor, candidates: torch.Tensor, layout: ParamLayout, groups: Sequence[PermGroup]
) -> torch.Tensor:
    """Permute the hidden units of each of ``candidates`` ``(M, D)`` to match ``reference`` ``(D,)``."""
    out = candidates.clone()
    for g, group in enumerate(groups):
        # a tensor shared with a later group (weights between two hidden layers) still has that
        # group's units in arbitrary order, so it is left out until that group is matched
        later = {name for gr in groups[g + 1 :] for name, _ in gr.members}
        ref = _unit_features(reference[None], layout, group, later)  # (1, U, F)
        cand = _unit_features(out, layout, group, later)  # (M, U, F)
        cost = torch.cdist(ref.expand(len(cand), -1, -1).double(), cand.double()) ** 2  # (M, U ref, U cand)
        perms = []
        for c in cost.numpy():
            _, col = linear_sum_assignment(c)
            perms.append(torch.as_tensor(col))
        ident = [torch.arange(gr.size).expand(len(out), -1) for gr in groups]
        ident[g] = torch.stack(perms)
        out = permute(out, layout, groups, ident)
    return out


def aligned_distances(
    reference: torch.Tensor, candidates: torch.Tensor, layout: ParamLayout, groups: Sequence[PermGroup]
) -> np.ndarray:
    """L2 distance ``(M,)`` from ``reference`` ``(D,)`` to each candidate after aligning its units."""
    aligned = align(reference, candidates, layout, groups)
    return (aligned - reference[None]).norm(dim=1).numpy()


def nearest(
    queries: torch.Tensor,
    bank: torch.Tensor,
    layout: ParamLayout,
    groups: Sequence[PermGroup],
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``queries`` ``(N, D)``, the aligned distance to and index of its nearest row of ``bank`` ``(M, D)``."""
    dist = np.empty(len(queries))
    idx = np.empty(len(queries), dtype=np.int64)
    for i, q in enumerate(queries):
        d = np.concatenate(
            [aligned_distances(q, bank[s : s + chunk], layout, groups) for s in range(0, len(bank), chunk)]
        )
        idx[i] = int(d.argmin())
        dist[i] = float(d[idx[i]])
    return dist, idx

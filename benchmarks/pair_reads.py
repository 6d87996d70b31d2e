"""Time to read one training step's pairs from a mixed zoo: whole runs (the pairs then gathered from
them) against only the checkpoints the pairs use (``gpt_params.pairs.read_pair_ends``, what
``MemberPairStream`` does).

    python benchmarks/pair_reads.py --zoo data/mnist-mlp-family.h5 --largest 3 --pairs 16 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from gpt_params.pairs import PairConfig, pair_indices, read_pair_ends
from gpt_params.zoo_reader import Zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", required=True, help="a mixed-architecture zoo")
    ap.add_argument(
        "--largest", type=int, default=3, help="time the members with the most parameters, and the smallest"
    )
    ap.add_argument("--pairs", type=int, nargs="+", default=[16, 256], help="pairs per step")
    ap.add_argument("--runs-per-step", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    zoo = Zoo(args.zoo)
    if not zoo.mixed:
        raise SystemExit(f"pair_reads.py: {args.zoo} holds one architecture; expected a mixed zoo")
    cfg = PairConfig(init_frac=0.5, late_bias=2)  # the family recipe's draw
    metric_all = zoo.metrics[cfg.metric]
    sizes = {m: layout.numel for m, layout in enumerate(zoo.member_layouts)}
    order = sorted(sizes, key=sizes.get)
    for m in order[::-1][: args.largest] + order[:1]:
        rows = zoo.runs_of_member(m, "train")
        for b in args.pairs:
            whole = used = 0.0
            for step in range(args.steps):
                g = np.random.default_rng([0, step, m])
                runs = np.sort(g.choice(rows, min(args.runs_per_step, len(rows)), replace=False))
                slot, i, j = pair_indices(g, metric_all[runs], b, cfg)
                t = time.perf_counter()
                params = np.stack([zoo.params(int(r)) for r in runs])  # (runs, K, D)
                params[slot, i], params[slot, j]
                whole += time.perf_counter() - t
                t = time.perf_counter()
                read_pair_ends(zoo, runs, slot, i, j)
                used += time.perf_counter() - t
            print(
                f"hidden={zoo.member_options[m].get('hidden')} params={sizes[m]} pairs={b}: "
                f"whole runs {whole / args.steps * 1e3:.1f} ms, used checkpoints {used / args.steps * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()

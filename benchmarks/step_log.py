"""Where a training run's time goes, per member: a summary of ``train/diffuse.py --step-log``.

    python train/diffuse.py --zoo data/mnist-mlp-family.h5 --out runs/steps $T --max-steps 500 \\
        --eval-every 0 --step-log runs/steps.jsonl
    python benchmarks/step_log.py runs/steps.jsonl --top 8

For one- and two-hidden-layer members, each member's first batch (where oneDNN compiles kernels for a new
shape) apart from its later ones: batches, seconds, mean seconds per batch, mean tokens (pairs x hidden units)
per batch and the share of time spent waiting for data. Then the ``--top`` members with the longest mean later
batch, with their pairs and tokens. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from gpt_params.scripting import fail


def load(path: Path) -> list[dict]:
    """The log's records, in order; a missing file or a line that is not a step record exits with one line."""
    if not path.is_file():
        raise fail(f"{path}: no such step log; expected the file train/diffuse.py --step-log wrote")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        try:
            r = json.loads(line)
            records.append({k: r[k] for k in ("hidden", "pairs", "data_s", "step_s")})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise fail(
                f"{path}:{i}: not a step record; expected JSON with hidden, pairs, data_s and step_s"
            ) from e
    if not records:
        raise fail(f"{path}: empty; expected at least one step record")
    return records


def summarise(records: list[dict], top: int) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    later: dict[tuple[int, ...], list[dict]] = defaultdict(list)
    seen: set[tuple[int, ...]] = set()
    for r in records:
        hidden = tuple(r["hidden"])
        layers = "one-layer" if len(hidden) == 1 else f"{len(hidden)}-layer"
        first = hidden not in seen
        seen.add(hidden)
        groups[f"{layers} {'first' if first else 'later'}"].append(r)
        if not first:
            later[hidden].append(r)

    def stats(rs: list[dict]) -> dict:
        seconds = sum(r["step_s"] for r in rs)
        return {
            "batches": len(rs), "seconds": round(seconds, 1), "s_per_batch": round(seconds / len(rs), 3),
            "tokens_per_batch": round(statistics.mean(r["pairs"] * sum(r["hidden"]) for r in rs)),
            "data_share": round(sum(r["data_s"] for r in rs) / max(seconds, 1e-9), 3),
        }  # fmt: skip

    slowest = sorted(later.items(), key=lambda kv: -statistics.mean(r["step_s"] for r in kv[1]))[:top]
    return {
        "batches": len(records), "seconds": round(sum(r["step_s"] for r in records), 1),
        "groups": {k: stats(v) for k, v in sorted(groups.items())},
        "slowest_later": [{"hidden": list(h), "pairs": rs[0]["pairs"], **stats(rs)} for h, rs in slowest],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log", type=Path, help="the JSON-lines file train/diffuse.py --step-log wrote")
    p.add_argument("--top", type=int, default=8, help="members with the longest later batches to list")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args()
    if args.top < 0:
        raise fail(f"--top {args.top}; expected a count >= 0")
    s = summarise(load(args.log), args.top)
    if args.json:
        print(json.dumps(s))
        return
    print(f"{args.log}: {s['batches']} batches, {s['seconds']} s")
    print(f"{'':24}{'batches':>8}{'seconds':>9}{'s/batch':>9}{'tokens':>8}{'data':>7}")
    rows = [(k, v) for k, v in s["groups"].items()]
    rows += [("-".join(map(str, m["hidden"])) + f" ({m['pairs']} pairs)", m) for m in s["slowest_later"]]
    for name, v in rows:
        print(
            f"{name:24}{v['batches']:>8}{v['seconds']:>9.1f}{v['s_per_batch']:>9.3f}"
            f"{v['tokens_per_batch']:>8}{v['data_share']:>7.1%}"
        )


if __name__ == "__main__":
    main()

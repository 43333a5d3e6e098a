"""What any scheduler could reach on `make bench-capacity`'s workload on this
host: an upper bound on capacity from the work the workload offers, next to
the measured capacities in benchmarks/results/capacity.json.

For 90 % of a run's requests to meet their TTFT deadlines, their prefills
must be computed by the last of those deadlines. Take the cheapest 90 % of
the run's requests (the most favourable choice), price each prefill at the
idle prefill time the benchmark itself measured on this host (the fit in
capacity.json, without its per-step constant, so batching could not beat it),
and ignore every decode: if that work does not fit between the first arrival
and the latest of those requests' deadlines, no scheduler meets 90 % at that
rate. The bound is the first grid rate (per seed, the same seeded arrivals
and lengths as the benchmark) where it does not fit; it is an upper bound on
any scheduler's capacity, generous on purpose (no decode work, no per-step
cost, every core busy from the first arrival).

    python benchmarks/capacity_bound.py      # reads capacity.json, runs no server
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from bench_capacity import rate_grid, workload  # noqa: E402
from common import RESULTS  # noqa: E402


def fits(items, coef, floor, multiplier, share=0.9) -> bool:
    work = lambda n: float(np.polyval([coef[0], coef[1], 0.0], n))  # noqa: E731 - no constant
    reqs = sorted(((work(len(w.prompt_token_ids)), w) for w in items), key=lambda x: x[0])
    keep = reqs[: int(np.ceil(share * len(reqs)))]
    if not keep:
        return True
    total = sum(t for t, _ in keep)
    start = min(w.arrival_s for _, w in keep)
    end = max(w.arrival_s + max(floor, multiplier * float(np.polyval(coef, len(w.prompt_token_ids))))
              for _, w in keep)
    return total <= end - start


def main() -> dict:
    cap = json.loads((RESULTS / "capacity.json").read_text())
    w = cap["workload"]
    coef = [float(x) for x in cap["deadline"]["ttft"].split("polyval([")[1].split("]")[0].split(",")]
    floor, mult = 1.0, 3.0
    rates = rate_grid(w["rate_min"], 4 * w["rate_max"], w["rate_step"])
    out = {"source": "benchmarks/results/capacity.json", "per_seed": {}}
    for seed in cap["seeds"]:
        bound = next((r for r in rates if not fits(
            workload(r, w["duration_s"], seed, 0, w["long_frac"], w["long_tokens"],
                     w["max_prompt_tokens"], w["max_output_tokens"]), coef, floor, mult)), None)
        base = max(cap["servers"][n]["per_seed"][str(seed)]["capacity"]["rps"]
                   for n in ("plain", "plain-chunked") if n in cap["servers"])
        medha = cap["servers"]["medha"]["per_seed"][str(seed)]["capacity"]["rps"]
        out["per_seed"][str(seed)] = {"any_scheduler_at_most_rps": bound, "best_baseline_rps": base,
                                      "medha_rps": medha, "bound_over_best_baseline": bound / base}
        print(f"seed {seed}: any scheduler <= {bound:.3f} req/s; best baseline {base:.3f}, Medha "
              f"{medha:.3f}; bound / best baseline {bound / base:.2f} (target for Medha: >= 5)")
    return out


if __name__ == "__main__":
    main()

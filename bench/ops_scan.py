"""LIF scan on CPU: compiled C++ op vs the pure-PyTorch scans, T = 400, B·N from 1e3 to 1e6 (B = 64).

Three implementations, each timed in the same run (best of 3) on the same currents:
  naive     the straightforward eager loop (bool masks, a refractory counter, (B, T, N) layout)
  torch     hm2bp's pure-PyTorch scan (time-major rows, float arithmetic, one work buffer)
  compiled  the C++ kernel of hm2bp.ops (torch.ops.hm2bp.lif_scan_)
Writes bench/results/ops_scan.json and the ``ops-scan`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import time

import torch

from common import RESULTS, machine, update_section
from hm2bp import backend
from hm2bp.io import atomic_write_json
from hm2bp.neuron import LIFParams, scan_inplace

T = 400
BATCH = 64
SIZES = [1_000, 10_000, 100_000, 1_000_000]


def naive_scan(currents: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """(B, T, N) → spikes, written the obvious way."""
    B, steps, N = currents.shape
    out = torch.zeros_like(currents)
    v, c, ref = (currents.new_zeros(B, N) for _ in range(3))
    for t in range(1, steps):
        c = c * (1 - 1 / p.tau_s) + currents[:, t - 1]
        v = v * (1 - 1 / p.tau_m) + c / p.tau_s
        held = ref > 0
        v = torch.where(held, torch.zeros_like(v), v)
        ref = torch.where(held, ref - 1, ref)
        spike = v > p.threshold - p.threshold_eps
        out[:, t] = spike.to(out.dtype)
        v = torch.where(spike, torch.zeros_like(v), v)
        ref = torch.where(spike, torch.full_like(ref, p.t_ref), ref)
    return out


def best_of(fn, reps: int = 3) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(total: int, params: LIFParams, have_cpp: bool) -> dict:
    n = max(1, total // BATCH)
    currents = torch.rand(BATCH, T, n, generator=torch.Generator().manual_seed(0)) * 0.3
    currents_tm = currents.transpose(0, 1).contiguous()  # the layout the GEMM writes in the engine
    buf = torch.empty(T + 1, BATCH, n)

    def fill() -> None:
        torch.div(currents_tm, params.tau_s, out=buf[1:])

    def run_torch() -> None:
        fill()
        scan_inplace(buf, params)

    def run_compiled() -> None:
        fill()
        torch.ops.hm2bp.lif_scan_(buf, params.threshold - params.threshold_eps, 1 - 1 / params.tau_m,
                                  1 - 1 / params.tau_s, params.t_ref, 0.0)

    row = {"batch_x_neurons": BATCH * n, "naive_s": best_of(lambda: naive_scan(currents, params)),
           "torch_s": best_of(run_torch), "fill_s": best_of(fill)}
    if have_cpp:
        backend.set_backend("compiled")
        row["compiled_s"] = best_of(run_compiled)
        backend.set_backend("auto")
    return row


def main() -> None:
    torch.set_num_threads(2)
    params = LIFParams(threshold=1.0)
    have_cpp = backend.load_extension("cpu") is not None
    rows = []
    for total in SIZES:
        rows.append(measure(total, params, have_cpp))
        print(rows[-1], flush=True)
    atomic_write_json(RESULTS / "ops_scan.json", {"benchmark": "ops_scan", "T": T, "batch": BATCH,
                                                  "machine": machine(), "rows": rows})
    lines = ["| B·N | naive eager ms | hm2bp torch ms | compiled C++ ms | of which filling the buffer ms | "
             "torch vs naive | **compiled vs naive** | compiled vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = r.get("compiled_s")
        comp_ms = "—" if comp is None else f"{1e3 * comp:.1f}"
        vs_naive = "—" if comp is None else f"**{r['naive_s'] / comp:.1f}×**"
        vs_torch = "—" if comp is None else f"{r['torch_s'] / comp:.2f}×"
        lines.append(f"| {r['batch_x_neurons']:,} | {1e3 * r['naive_s']:.1f} | {1e3 * r['torch_s']:.1f} | "
                     f"{comp_ms} | {1e3 * r['fill_s']:.1f} | {r['naive_s'] / r['torch_s']:.1f}× | {vs_naive} | "
                     f"{vs_torch} |")
    m = machine()
    update_section("ops-scan", f"""## LIF scan op on CPU

`python bench/ops_scan.py` — T = {T}, B = {BATCH}, float32, {m['threads']} threads ({m['cpu_capability']}),
best of 3; the hm2bp and compiled times include filling the time-major work buffer with the currents (in the engine
the GEMM writes them there), which is memory-bound and bounds the ratio at large B·N.

""" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

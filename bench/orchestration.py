"""How much of a forward pass is kernels, and how much is the Python that calls them.

Table 2's observed speed-up divides two whole inference passes. Each pass is a sequence of Numba
kernel calls plus the Python around them: module dispatch, the fusion decisions, argument checks,
weight packing, output allocation and the thread policy. That Python costs about the same in both
networks, so it weighs several times more in the compressed one. This script separates the two:

* **library**: ``net(x)`` under ``no_grad``, as ``tuckerref table2`` times its total;
* **kernels only**: the same pass replayed as its bare kernel calls. One library pass is
  recorded (every call of a Numba dispatcher made from Python, with its arguments and the Numba
  thread count it ran under); the replay calls the same dispatchers with the same arrays (outputs
  are overwritten) and nothing else. That is the floor of any reorganisation of the Python layer
  (a cached inference plan, say) that keeps these kernels;
* **Python**: the difference of the two medians. For the original network it is smaller than
  the run-to-run noise of a 70 ms pass and can come out negative.

Both networks (the paper's, and its Table 2 compression with the paper's ranks, random weights),
both ways, are timed round robin, one call of each per round, so that the ratios hold when the
machine's speed drifts. Each figure is the median of ``--repeats`` rounds after one untimed round.
Then the kernel calls of the compressed pass, each timed alone in the replay (medians), so the
non-arithmetic kernels (the 1x1x1 factors that only move memory) show up.

    .venv/bin/python bench/orchestration.py [--repeats 15] [--threads 2]
"""
from __future__ import annotations

import time

import numba
import numpy as np
from numba.core.registry import CPUDispatcher

from _rounds import paper_networks, parse_round_args
from tuckerref.flops import count_network
from tuckerref.nn import no_grad


def record_kernel_calls(net, x) -> list:
    """[(dispatcher, args, threads)] of every Numba kernel that ``net(x)`` calls from Python, in order."""
    calls = []
    call = CPUDispatcher.__call__

    def recording(self, *args, **kwargs):
        if kwargs:
            raise RuntimeError(f"{self.py_func.__name__} called with keyword arguments; the replay passes none")
        calls.append((self, args, numba.get_num_threads()))
        return call(self, *args)

    CPUDispatcher.__call__ = recording
    try:
        with no_grad():
            net(x)
    finally:
        CPUDispatcher.__call__ = call
    return calls


def replay(calls, timings=None):
    """Call the recorded kernels again, each under its recorded thread count; with ``timings`` (a list
    per call) append each call's wall time."""
    threads = numba.get_num_threads()
    for i, (kernel, args, n) in enumerate(calls):
        if n != threads:
            numba.set_num_threads(n)
        t0 = time.perf_counter()
        kernel(*args)
        if timings is not None:
            timings[i].append(time.perf_counter() - t0)
        if n != threads:
            numba.set_num_threads(threads)


def main(argv=None):
    args = parse_round_args(__doc__, argv)
    original, compressed, x = paper_networks()
    nets = {"original": original, "compressed": compressed}
    with no_grad():
        for net in nets.values():
            net(x)  # compiles or loads the kernels before anything is recorded
    calls = {name: record_kernel_calls(net, x) for name, net in nets.items()}
    runs = {}
    for name, net in nets.items():
        runs[name, "library"] = lambda net=net: net(x)
        runs[name, "kernels only"] = lambda c=calls[name]: replay(c)
    samples = {key: [] for key in runs}
    per_call = [[] for _ in calls["compressed"]]
    with no_grad():
        for fn in runs.values():
            fn()
        for _ in range(args.repeats):
            for key, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                samples[key].append(time.perf_counter() - t0)
            replay(calls["compressed"], per_call)
    ms = {key: float(np.median(v)) * 1e3 for key, v in samples.items()}
    flops = {name: count_network(net, x.shape[1:]).flops for name, net in nets.items()}
    print(f"batch 1, {numba.get_num_threads()} thread(s), medians of {args.repeats} rounds (round robin)")
    print(f"{'network':<12} {'library ms':>11} {'kernels only ms':>16} {'Python ms':>10} {'Python share':>13} {'kernel calls':>13}")
    for name in nets:
        lib, ker = ms[name, "library"], ms[name, "kernels only"]
        print(f"{name:<12} {lib:11.3f} {ker:16.3f} {lib - ker:10.3f} {(lib - ker) / lib:13.1%} {len(calls[name]):13d}")
    print(f"speed-up original / compressed: library x{ms['original', 'library'] / ms['compressed', 'library']:.2f}, "
          f"kernels only x{ms['original', 'kernels only'] / ms['compressed', 'kernels only']:.2f}, "
          f"FLOPs x{flops['original'] / flops['compressed']:.2f}")
    print("kernel calls of the compressed pass (replayed, medians):")
    for (kernel, _, n), t in zip(calls["compressed"], per_call):
        print(f"  {kernel.py_func.__name__:<28} {n} thread(s) {np.median(t) * 1e3:9.3f} ms")


if __name__ == "__main__":
    main()

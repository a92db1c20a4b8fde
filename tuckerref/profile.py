"""Per-layer timing of a network: each layer and sub-layer on the real input it sees in the network.

The network is run once in inference mode and the input of every layer (recursively, into nested
Sequentials) is captured; then each layer is timed on its own captured input over ``warmup``
untimed and ``repeats`` timed calls (taken round robin over all layers, and over all networks
when several are profiled together: :func:`profile_networks`), in wall time (``time.perf_counter``) and process CPU time
(``time.process_time``, summed over all threads, so it exceeds wall time when several threads
work). A composite layer (a Sequential, e.g. a Tucker-2 replacement) is timed as a whole *and*
through its sub-layers. The whole forward pass is timed the same way, and so is the same pass as a
compiled inference program (:mod:`tuckerref.nn.program`: the checks, weight packing and allocations
done once), so that the Python around the kernels can be told from the kernels.

Threads: ``threads=k`` sets Numba's thread count for the measurement (restored afterwards);
``threads=1`` is the "embedded" setting. The timing commands also let OpenMP's idle worker threads
sleep instead of spinning (:func:`sleep_idle_workers`), so that CPU-time readings do not carry a
spinning worker's tick-sampled time.

Extension point: :data:`PROFILERS` maps a backend name to a function with the signature of
:func:`profile_network` returning a :class:`NetworkProfile` whose layer names are the network's
dotted child names ("c1", "c1.0", ...). ``tuckerref table2 --backend`` offers its keys; another
backend (e.g. exported C code) adds an entry ``PROFILERS["c"] = its_profile_function``.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import numba
import numpy as np

from .kernels import simd
from .nn import Module, Sequential, no_grad
from .nn.program import compile_inference
from .timings import LayerTiming, NetworkProfile, Stats, check_input, check_repeats


# -- argument checks ----------------------------------------------------------------------------
def check_threads(threads) -> int:
    """Validate a thread count against Numba's maximum; ``None`` means the current setting."""
    if threads is None:
        return numba.get_num_threads()
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(threads, bool) or int(threads) != threads or not 1 <= int(threads) <= limit:
        raise ValueError(f"threads must be an integer in 1..{limit} (NUMBA_NUM_THREADS), got {threads!r}")
    return int(threads)


def sleep_idle_workers() -> str:
    """Ask OpenMP to put idle worker threads to sleep, ``OMP_WAIT_POLICY=passive``, unless the
    environment already sets a policy; returns the policy in effect (for the run's record).

    With OpenMP's default, a worker spins for a while after each parallel region, and Linux adds
    a *running* thread's CPU time to the process's total only at scheduler ticks, so
    ``process_time`` read just after a parallel region is off by up to a tick of that thread: one
    2-thread Numba kernel of 22 ms read 1.50 to 2.14 times its wall time on 2 cores (more than 2
    cannot be), and the compressed network's pass 1.85 to 2.15 from one ``table2`` run to the next.
    A sleeping worker's time is added when it blocks, so the readings hold (1.92 and 1.93 in two
    runs); and the time a spinning worker burns while the main thread runs the Python between
    kernels is not the pass's work either. Takes effect only before Numba starts its threads (the
    first parallel kernel or thread-count query of the process), and only with Numba's OpenMP
    threading layer.
    """
    return os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def register_file() -> dict:
    """The kernels' view of the target, for a timing run's record: its vector registers and its
    widest SIMD vector in bytes (the register tiles' shapes and widths follow them, see
    :mod:`tuckerref.kernels.tiling`), so figures from different machines are told apart."""
    return {"vector_registers": simd.VECTOR_REGISTERS, "widest_vector_bytes": simd.VECTOR_BYTES}


@contextmanager
def numba_threads(threads: int):
    """Run the block with Numba's thread count set to ``threads``, restoring the previous count."""
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# -- capture and timing -------------------------------------------------------------------------
def _first_leaf(m: Module) -> Module:
    while isinstance(m, Sequential) and len(m):
        m = m[0]
    return m


def _mutates_input(m: Module) -> bool:
    """True when a forward call overwrites its input (an in-place ReLU first in line)."""
    return bool(getattr(_first_leaf(m), "inplace", False))


def capture_inputs(net: Sequential, x: np.ndarray) -> dict:
    """Run ``net`` once on ``x``; return {dotted name: copy of the input that (sub-)layer received}."""
    inputs = {}
    _capture(net, x, "", inputs)
    return inputs


def _capture(seq: Sequential, x: np.ndarray, prefix: str, inputs: dict) -> np.ndarray:
    for name, child in seq.named_children():
        full = f"{prefix}.{name}" if prefix else name
        inputs[full] = x.copy()
        x = _capture(child, x, full, inputs) if isinstance(child, Sequential) else child.forward(x)
    return x


def time_call(fn, x: np.ndarray, repeats: int, warmup: int, fresh_input: bool = False) -> tuple[Stats, Stats]:
    """(wall, cpu) Stats of ``fn(x)``; with ``fresh_input`` each call gets an untimed copy of ``x``."""
    for _ in range(warmup):
        fn(x.copy() if fresh_input else x)
    wall, cpu = [], []
    for _ in range(repeats):
        arg = x.copy() if fresh_input else x
        c0, w0 = time.process_time(), time.perf_counter()
        fn(arg)
        w1, c1 = time.perf_counter(), time.process_time()
        wall.append(w1 - w0)
        cpu.append(c1 - c0)
    return Stats(wall), Stats(cpu)


def _timed_calls(net: Sequential, inputs: dict, x: np.ndarray) -> list:
    """(name, kind, forward, input, fresh_input) of every layer and sub-layer of ``net``, depth first, then
    of the whole forward pass under the name "total", and of the same pass compiled
    (:func:`tuckerref.nn.program.compile_inference`) under the name "program"."""
    calls = []

    def walk(seq, prefix):
        for child_name, child in seq.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            calls.append((name, type(child).__name__, child.forward, inputs[name], _mutates_input(child)))
            if isinstance(child, Sequential):
                walk(child, name)

    walk(net, "")
    calls.append(("total", "Sequential", net.forward, x, _mutates_input(net)))
    calls.append(("program", "InferenceProgram", compile_inference(net, x.shape, x.dtype), x, False))
    return calls


def _timing_tree(net: Sequential, samples: dict, prefix="") -> list:
    """LayerTimings of ``net``'s children (recursively) from {name: (wall samples, cpu samples)}."""
    layers = []
    for child_name, child in net.named_children():
        name = f"{prefix}.{child_name}" if prefix else child_name
        children = _timing_tree(child, samples, name) if isinstance(child, Sequential) else []
        wall, cpu = samples[name]
        layers.append(LayerTiming(name=name, kind=type(child).__name__, wall=Stats(wall), cpu=Stats(cpu),
                                  children=children))
    return layers


def profile_networks(nets: list, x: np.ndarray, *, repeats: int = 10, warmup: int = 1,
                     threads: int | None = None) -> list:
    """:func:`profile_network` of several networks on the same batch, measured together.

    Every layer, sub-layer and whole forward pass of every network is warmed up first, then timed
    in ``repeats`` rounds of one call each, round robin, so that a drift of the machine's speed
    during the measurement touches all figures alike (these machines are shared: the same call
    can take a fifth longer a minute later), and ratios between the networks hold.
    """
    for net in nets:
        if not isinstance(net, Sequential):
            raise ValueError(f"profile_network expects a Sequential network, got {type(net).__name__}")
    repeats, warmup = check_repeats(repeats, warmup)
    threads = check_threads(threads)
    xs = [check_input(net, x) for net in nets]
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        with numba_threads(threads), no_grad():
            calls = [_timed_calls(net, capture_inputs(net, xi), xi) for net, xi in zip(nets, xs)]
            flat = [call for net_calls in calls for call in net_calls]
            for _, _, forward, inp, fresh in flat:
                time_call(forward, inp, 0, warmup, fresh)
            walls, cpus = [[] for _ in flat], [[] for _ in flat]
            for _ in range(repeats):
                for i, (_, _, forward, inp, fresh) in enumerate(flat):
                    wall, cpu = time_call(forward, inp, 1, 0, fresh)
                    walls[i] += wall.samples
                    cpus[i] += cpu.samples
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)
    profiles, i = [], 0
    for net, xi, net_calls in zip(nets, xs, calls):
        samples = {name: (walls[i + j], cpus[i + j]) for j, (name, *_) in enumerate(net_calls)}
        i += len(net_calls)
        total, program = (LayerTiming(name=name, kind=kind, wall=Stats(samples[name][0]), cpu=Stats(samples[name][1]))
                          for name, kind in (("total", "Sequential"), ("program", "InferenceProgram")))
        profiles.append(NetworkProfile(layers=_timing_tree(net, samples), total=total, input_shape=tuple(xi.shape),
                                       repeats=repeats, warmup=warmup, threads=threads, program=program))
    return profiles


def profile_network(net: Sequential, x: np.ndarray, *, repeats: int = 10, warmup: int = 1,
                    threads: int | None = None) -> NetworkProfile:
    """Time every layer and sub-layer of ``net`` on the input it sees, and the whole forward pass.

    The network is put in inference mode for the measurement (dropout is the identity, and
    ``no_grad``: nothing is kept for a backward pass, as in the paper's timing of evaluations) and
    its previous training mode is restored afterwards. Each figure's samples are taken round robin
    over all of them (:func:`profile_networks`).
    """
    return profile_networks([net], x, repeats=repeats, warmup=warmup, threads=threads)[0]


def profile_each(profiler, nets: list, x: np.ndarray, **kwargs) -> list:
    """Profiles of ``nets`` from one timing backend. The engine's own backend measures them together,
    round robin (:func:`profile_networks`); another backend times one network after the other."""
    if profiler is profile_network:
        return profile_networks(nets, x, **kwargs)
    return [profiler(net, x, **kwargs) for net in nets]


def _profile_exported_c(net, x, **kwargs):
    """The "c" backend: ``net`` exported to C99, compiled with cc and timed single-threaded."""
    from .export.timing import profile_c  # imported on use: it needs a C compiler only then
    return profile_c(net, x, **kwargs)


#: Backend name -> profiling function (signature of :func:`profile_network`); see the module docstring.
PROFILERS = {"numba": profile_network, "c": _profile_exported_c}


def get_profiler(backend: str):
    try:
        return PROFILERS[backend]
    except KeyError:
        raise ValueError(f"unknown timing backend {backend!r} (available: {sorted(PROFILERS)})") from None

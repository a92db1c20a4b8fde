"""One grid point of the rank study: train (compress, evaluate, fine-tune, evaluate, count) and time.

:func:`train_point` is what an executor runs, in a worker process or on a Dask worker: it takes a
plain dict (picklable, no open files) and returns a plain dict. It reads the weights and the data
set from their paths (on a cluster, paths every worker can read). Its numbers depend only on the
task: the network and data files, the ranks, the split, the optimiser settings, the seed (which
seeds the shuffling and the dropout masks, :func:`tuckerref.train.stream`) and the number of Numba
threads, which the task sets; NumPy's BLAS, used by the decompositions' SVDs, runs on one thread.
Compression (HOOI from an HOSVD start), training and evaluation are deterministic given those, so
a point gives the same numbers, bit for bit, in whatever process or on whatever machine (of the
same platform and library versions) it runs.

:func:`time_point` times the compiled inference pass (:func:`tuckerref.nn.compile_inference`) of a
point's compressed network; the study runs it on the client, one point at a time, after the
parallel training phase.
"""
from __future__ import annotations

import os
import platform
import time
from contextlib import contextmanager

import numpy as np


@contextmanager
def one_blas_thread():
    """Run the block with NumPy's BLAS/LAPACK on one thread (threadpoolctl, installed with scikit-learn):
    the SVDs of the decompositions then give the same bits whatever the machine's core count."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        yield
        return
    with threadpool_limits(limits=1):
        yield


def set_threads(threads):
    """Run Numba's parallel loops on ``threads`` threads (at most its pool's size); returns the number set."""
    import numba

    threads = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    return threads


def build_network(weights, ranks, plan):
    """The network of ``weights`` compressed with ``ranks`` (None: the original), and its compression report."""
    from ..compress import compress_network
    from ..io import load_model

    net, _ = load_model(weights)
    if ranks is None:
        return net, []
    ranks = {name: (r[0] if len(r) == 1 else tuple(r)) for name, r in ranks.items()}
    return compress_network(net, plan=plan, ranks=ranks, report=True)


def train_point(task: dict) -> dict:
    """Compress, evaluate, fine-tune ``task["epochs"]`` epochs, evaluate, count; see the module docstring.

    ``task`` keys: ``weights``, ``data`` (paths), ``ranks`` ({layer: [ranks]} or None for the original
    network, which is only evaluated), ``plan``, ``train``, ``test`` (clip indices), ``epochs``,
    ``optimizer`` (name and hyper-parameters), ``batch_size``, ``seed``, ``threads``, and the
    point's identity (``key``, ``label``, ``kind``, ``value``, ``fold``, ``n_folds``), copied to the record.
    """
    from ..data.store import ClipDataset
    from ..flops import count_network
    from ..optim import make_optimizer
    from ..train import Subset, evaluate, fit, seed_dropout

    threads = set_threads(task["threads"])
    t0 = time.perf_counter()
    with one_blas_thread():
        net, report = build_network(task["weights"], task["ranks"], task["plan"])
    seed_dropout(net, task["seed"])
    with ClipDataset(task["data"]) as ds:
        train, test = Subset(ds, task["train"]), Subset(ds, task["test"])
        before = evaluate(net, test, task["batch_size"])["accuracy"]
        history = []
        if task["ranks"] is not None and task["epochs"] > 0:
            opt = task["optimizer"]
            optimizer = make_optimizer(opt["name"], net.parameters(),
                                       **{k: v for k, v in opt.items() if k != "name"})
            history = fit(net, train, None, epochs=task["epochs"], optimizer=optimizer,
                          batch_size=task["batch_size"], seed=task["seed"], progress=False)
            after = evaluate(net, test, task["batch_size"])["accuracy"]
        else:
            after = before
    counts = count_network(net)
    return {"type": "train", **{k: task[k] for k in ("key", "label", "kind", "value", "fold", "n_folds",
                                                     "epochs", "seed")},
            "ranks": task["ranks"], "acc_before": before, "acc_after": after,
            "params": int(counts.params), "flops": int(counts.flops),
            "rel_errors": {r.name: r.rel_error for r in report if r.method != "none"},
            "train_loss": [h["train_loss"] for h in history], "n_train": len(task["train"]),
            "n_test": len(task["test"]), "threads": threads, "seconds": time.perf_counter() - t0,
            "host": platform.node(), "pid": os.getpid()}


def time_point(net, clip_shape, batch=1, repeats=7, warmup=2, seed=0):
    """Wall times (seconds) of ``repeats`` runs of ``net``'s compiled inference pass on one batch, after
    ``warmup`` runs; returns (median, minimum, all times)."""
    from ..nn import compile_inference

    if repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError(f"repeats, warmup and batch must be >= 1, >= 0, >= 1, got {repeats}, {warmup}, {batch}")
    net.eval()
    shape = (batch,) + tuple(clip_shape)
    program = compile_inference(net, shape)
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    for _ in range(warmup):
        program(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        program(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(min(times)), times


__all__ = ["train_point", "time_point", "build_network", "set_threads"]

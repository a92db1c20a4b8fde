"""``train --kfold K``'s folds as executor tasks: one fresh network trained and tested per fold.

:func:`train_fold` is what an executor (:mod:`tuckerref.study.executor`) runs, in this process, in
a local worker process or on a Dask worker: it takes a plain dict and returns a plain dict. A task
carries everything its numbers depend on: the data file (a path every worker can read), the fold's
training and test clip indices, the optimiser settings, the epochs, the batch size, the dropout
probability, the seed (which draws the network's initialisation, :func:`tuckerref.models.thetis_net`,
and the shuffling and dropout streams, :func:`tuckerref.train.stream`) and the number of Numba
threads, which the task sets. So a fold gives the same numbers, bit for bit, whichever executor
runs it (K-fold cross-validation as in the paper's Section 4; the folds from
:func:`tuckerref.train.kfold`).
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def make_fold_tasks(data, folds, *, epochs, optimizer, batch_size, seed, dropout=0.2, threads=1, checkpoint_dir=None,
                    resume=False, checkpoint_name="checkpoint.h5"):
    """One task (a plain dict) per fold ``(train indices, test indices)`` of ``folds``.

    ``optimizer``: ``{"name": ..., hyper-parameters}``. With ``checkpoint_dir`` fold ``f`` (from 1)
    checkpoints into ``checkpoint_dir/fold<f>``; ``resume`` continues each fold whose checkpoint
    exists there. The last fold's task also returns its network's weights.
    """
    tasks = []
    for f, (train, test) in enumerate(folds, start=1):
        ckpt = str(Path(checkpoint_dir) / f"fold{f}") if checkpoint_dir else None
        tasks.append({"label": "cross-validation", "fold": f, "n_folds": len(folds),
                      "data": str(Path(data).resolve()), "train": [int(i) for i in train],
                      "test": [int(i) for i in test], "epochs": int(epochs), "optimizer": dict(optimizer),
                      "batch_size": int(batch_size), "seed": int(seed), "dropout": float(dropout),
                      "threads": int(threads),
                      "checkpoint_dir": ckpt,
                      "resume": bool(resume and ckpt is not None and (Path(ckpt) / checkpoint_name).exists()),
                      "return_weights": f == len(folds)})
    return tasks


def train_fold(task: dict) -> dict:
    """Train a fresh paper network (:func:`tuckerref.models.thetis_net`) on the fold's training clips,
    testing after every epoch; returns the history, the final test accuracy and (for the task that
    asks) the network's ``state_dict``. See the module docstring."""
    from ..data.store import ClipDataset
    from ..models import thetis_net
    from ..optim import make_optimizer
    from ..train import Subset, fit
    from .points import set_threads

    threads = set_threads(task["threads"])
    t0 = time.perf_counter()
    with ClipDataset(task["data"]) as ds:
        net = thetis_net(ds.clip_shape, seed=task["seed"], num_classes=len(ds.class_names), dropout=task["dropout"])
        opt = task["optimizer"]
        optimizer = make_optimizer(opt["name"], net.parameters(), **{k: v for k, v in opt.items() if k != "name"})
        history = fit(net, Subset(ds, task["train"]), Subset(ds, task["test"]), epochs=task["epochs"],
                      optimizer=optimizer, batch_size=task["batch_size"], seed=task["seed"],
                      checkpoint_dir=task["checkpoint_dir"], resume=task["resume"], progress=False)
    return {"fold": task["fold"], "n_folds": task["n_folds"], "seed": task["seed"], "threads": threads,
            "history": history, "test_acc": history[-1]["test_acc"] if history else float("nan"),
            "n_train": len(task["train"]), "n_test": len(task["test"]),
            "state": dict(net.state_dict()) if task["return_weights"] else None,
            "seconds": time.perf_counter() - t0, "host": platform.node(), "pid": os.getpid()}


__all__ = ["make_fold_tasks", "train_fold"]

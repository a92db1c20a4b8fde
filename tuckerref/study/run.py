"""The rank study: for each grid point, accuracy before and after fine-tuning, parameters, FLOPs and time.

Phases (every result appended to the record log as it completes, :mod:`tuckerref.study.records`):

1. checks, before any training: the weights and data load and fit each other, the grid parses and
   every rank lies in [1, the layer's channels] (:mod:`tuckerref.study.grid`), the settings match
   those of an earlier run in the same directory;
2. training, in parallel on an executor (:mod:`tuckerref.study.executor`): one task per point and
   fold (:func:`tuckerref.study.points.train_point`), plus the original network's evaluation;
   tasks already in the log are skipped, so a rerun continues an interrupted study;
3. timing, on the client, one point at a time with nothing else running (the executor's workers
   have finished): the compiled inference pass of each point's compressed network, median of
   several runs (the time depends on the ranks, not on the weights' values);
4. the CSV summary and the plots (:mod:`tuckerref.study.plots`).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from .grid import parse_grid, resolve_grid
from .points import build_network, set_threads, time_point, train_point
from .records import RecordLog, summarise

ORIGINAL_KEY = "original"


def file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _recorded_split(meta):
    while meta:
        if meta.get("split"):
            return meta["split"]
        meta = meta.get("source_meta")
    return {}


def prepare(weights, data, grid, *, plan="table2", seed=None, test_fraction=None, kfold=None):
    """Load and check everything a study needs, before any training: ``(net, points, splits, info)``.

    ``splits`` is a list of (train indices, test indices): one split (``seed``, ``test_fraction``,
    by default those recorded in the weights file, else 0 and 0.1) or ``kfold`` folds.
    """
    from ..data.store import ClipDataset
    from ..io import load_model
    from ..train import kfold as kfold_split
    from ..train import train_test_split, validate_data

    items = parse_grid(grid)  # a malformed specification fails before any file is read
    for path, what in ((weights, "weights file"), (data, "data set")):
        if not Path(path).exists():
            raise ValueError(f"{what} {path} does not exist")
    net, meta = load_model(weights)
    points = resolve_grid(items, net, plan)
    recorded = _recorded_split(meta)
    seed = int(recorded.get("seed", 0) if seed is None else seed)
    test_fraction = float(recorded.get("test_fraction", 0.1) if test_fraction is None else test_fraction)
    with ClipDataset(data) as ds:
        validate_data(net, ds, f"data set {data}")
        if kfold:
            if isinstance(kfold, bool) or not isinstance(kfold, int) or not 2 <= kfold <= len(ds):
                raise ValueError(f"--kfold must be an integer in [2, {len(ds)}], got {kfold!r}")
            splits = kfold_split(len(ds), kfold, seed, stratify=ds.labels)
        else:
            splits = [train_test_split(len(ds), test_fraction, seed, stratify=ds.labels)]
        clip_shape = ds.clip_shape
    info = {"seed": seed, "test_fraction": None if kfold else test_fraction, "kfold": kfold or None,
            "clip_shape": list(clip_shape)}
    return net, points, splits, info


def make_tasks(points, splits, *, weights, data, plan, epochs, optimizer, batch_size, seed, threads):
    """Training tasks (plain dicts): the original network's evaluation, then each point, per fold."""
    common = {"weights": str(Path(weights).resolve()), "data": str(Path(data).resolve()), "plan": plan,
              "epochs": int(epochs), "optimizer": dict(optimizer), "batch_size": int(batch_size),
              "seed": int(seed), "threads": int(threads), "n_folds": len(splits)}
    entries = [(ORIGINAL_KEY, "original", "original", None, None)]
    entries += [(p.key, p.label, p.kind, p.value if p.kind != "ranks" else None,
                 {n: list(r) for n, r in p.ranks.items()}) for p in points]
    tasks = []
    for key, label, kind, value, ranks in entries:
        for fold, (train, test) in enumerate(splits):
            tasks.append({**common, "key": key, "label": label, "kind": kind, "value": value, "ranks": ranks,
                          "fold": fold, "train": [int(i) for i in train], "test": [int(i) for i in test],
                          **({"epochs": 0} if ranks is None else {})})
    return tasks


def run_study(weights, data, outdir, grid, *, executor=None, plan="table2", epochs=4, optimizer=None,
              batch_size=16, seed=None, test_fraction=None, kfold=None, threads=1, time_batch=1, time_repeats=7,
              time_warmup=2, time_threads=None, limit=None, plot=True, log=print):
    """Run (or continue) a rank study in ``outdir``; returns the summary rows (see the module docstring).

    ``limit``: train at most this many tasks in this call (the rest are left for a rerun; timing and
    plots wait until every task is trained). ``threads``: Numba threads of each training task;
    ``time_threads``: of the timing runs (default: Numba's default).
    """
    from .executor import LocalExecutor

    optimizer = dict(optimizer or {"name": "adam", "lr": 5e-4, "weight_decay": 0.0})
    if epochs < 0 or batch_size < 1 or threads < 1:
        raise ValueError(f"--epochs must be >= 0, --batch-size and --threads >= 1, got {epochs}, {batch_size}, "
                         f"{threads}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    net, points, splits, info = prepare(weights, data, grid, plan=plan, seed=seed, test_fraction=test_fraction,
                                        kfold=kfold)
    records = RecordLog(outdir)
    settings = {"weights": str(Path(weights).resolve()), "weights_sha256": file_digest(weights),
                "data": str(Path(data).resolve()), "data_sha256": file_digest(data), "plan": plan,
                "epochs": epochs, "optimizer": optimizer, "batch_size": batch_size, "threads": threads, **info}
    records.check_settings(settings)
    tasks = make_tasks(points, splits, weights=weights, data=data, plan=plan, epochs=epochs, optimizer=optimizer,
                       batch_size=batch_size, seed=info["seed"], threads=threads)
    done = {(r["key"], r["fold"]) for r in records.read() if r["type"] == "train"}
    todo = [t for t in tasks if (t["key"], t["fold"]) not in done]
    log(f"rank study in {outdir}: {len(points)} grid points x {len(splits)} "
        f"{'folds' if len(splits) > 1 else 'split'} + the original; {len(tasks) - len(todo)} tasks already done, "
        f"{len(todo)} to train")
    for p in points:
        log(f"  {p.label:<24} {p.key}")
    if limit is not None:
        todo = todo[:limit]
    executor = executor or LocalExecutor(1)
    if todo:
        log(f"training on {executor.describe()}")
        t0 = time.perf_counter()
        for task, result in executor.map_unordered(train_point, todo):
            records.append(result)
            log(f"  {result['label']:<24} fold {result['fold']}: accuracy {100 * result['acc_before']:5.1f}% -> "
                f"{100 * result['acc_after']:5.1f}%, {result['flops']:,} FLOPs, {result['seconds']:.1f} s "
                f"({result['host']}:{result['pid']})")
        log(f"training phase: {time.perf_counter() - t0:.1f} s")
    trained = {(r["key"], r["fold"]) for r in records.read() if r["type"] == "train"}
    if any((t["key"], t["fold"]) not in trained for t in tasks):
        log(f"{sum((t['key'], t['fold']) not in trained for t in tasks)} tasks left; rerun to continue")
        return summarise(records.read())

    timed = {r["key"] for r in records.read() if r["type"] == "time"}
    if time_threads is not None:
        set_threads(time_threads)
    for task in (t for t in tasks if t["fold"] == 0 and t["key"] not in timed):
        net_p, _ = build_network(weights, task["ranks"], plan)
        median, best, runs = time_point(net_p, info["clip_shape"], batch=time_batch, repeats=time_repeats,
                                        warmup=time_warmup)
        records.append({"type": "time", "key": task["key"], "label": task["label"],
                        "time_ms_median": 1e3 * median / time_batch, "time_ms_min": 1e3 * best / time_batch,
                        "time_runs": len(runs), "batch": time_batch, "runs_ms": [1e3 * t for t in runs]})
        log(f"  timed {task['label']:<24} {1e3 * median / time_batch:.3f} ms per clip (median of {len(runs)})")
    rows = summarise(records.read())
    if plot:
        from .plots import plot_study
        for path in plot_study(rows, outdir, title=f"rank study: {Path(data).name}, {epochs} fine-tuning "
                                                    f"epoch{'' if epochs == 1 else 's'}"):
            log(f"plot: {path}")
    return rows


__all__ = ["run_study", "prepare", "make_tasks", "ORIGINAL_KEY"]

"""``tuckerref train | finetune | evaluate``: train the paper network, fine-tune a (compressed) network, score one.

All three draw the same stratified train/test split from ``--seed`` and ``--test-fraction``;
``finetune`` and ``evaluate`` take both from the weights file's metadata when not given, so a
fine-tuned network never trains on the clips its original was tested on.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..outputs import check_outputs, save_or_fallback
from .defaults import CHECKPOINT_NAME, OPTIMIZER_NAMES

# NumPy, h5py and the engine are imported inside the run functions (see tuckerref.cli).
DEFAULT_SEED, DEFAULT_TEST_FRACTION = 0, 0.1


def register(sub):
    p = sub.add_parser("train", help="train the paper network on a clip data set (HDF5)")
    p.add_argument("data", help="clip data set (tuckerref-clips HDF5)")
    p.add_argument("out", help="output weights file (HDF5)")
    _training_options(p, epochs=100)
    p.add_argument("--kfold", type=int, metavar="K",
                   help="K-fold cross-validation instead of one split: one fresh network per fold; prints each "
                        "fold's test accuracy and their mean; OUT keeps the last fold's network")
    p.add_argument("--dropout", type=float, default=0.2,
                   help="the network's dropout probability (default %(default)s, the paper's)")
    p.add_argument("--workers", type=int, default=None,
                   help="with --kfold: local worker processes training the folds (default 1; 0 trains them in "
                        "this process)")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="with --kfold: train the folds on this Dask cluster instead (needs tuckerref[dask]; the "
                        "data and --checkpoint-dir paths must be readable by every worker)")
    p.add_argument("--threads", type=int, default=None,
                   help="with --kfold: Numba threads per fold (default 1); part of a fold's settings: same "
                        "threads, same numbers")
    p.set_defaults(func=run_train)

    p = sub.add_parser("finetune", help="continue training a saved (e.g. compressed) network on its training split")
    p.add_argument("weights", help="network to fine-tune (weights file with architecture spec)")
    p.add_argument("data", help="clip data set (tuckerref-clips HDF5)")
    p.add_argument("out", help="output weights file (HDF5)")
    _training_options(p, epochs=100)
    p.set_defaults(func=run_finetune)

    p = sub.add_parser("evaluate", help="accuracy and confusion matrix of a saved network on a clip data set")
    p.add_argument("weights", help="weights file with architecture spec")
    p.add_argument("data", help="clip data set (tuckerref-clips HDF5)")
    p.add_argument("--split", choices=("test", "all"), default="test", help="clips to score (default test)")
    _split_options(p)
    p.add_argument("--batch-size", type=int, default=20)
    p.set_defaults(func=run_evaluate)


def _split_options(p):
    p.add_argument("--seed", type=int, default=None,
                   help=f"split, initialisation, shuffling and dropout seed (default: the weights file's, else {DEFAULT_SEED})")
    p.add_argument("--test-fraction", type=float, default=None,
                   help=f"held-out fraction per class (default: the weights file's, else {DEFAULT_TEST_FRACTION})")


def _training_options(p, epochs):
    p.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZER_NAMES), default="sgd")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 0.001, the paper's)")
    p.add_argument("--momentum", type=float, default=0.7, help="SGD momentum (default 0.7)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="L2 weight decay (default 0.01)")
    p.add_argument("--batch-size", type=int, default=20, help="mini-batch size (default 20)")
    _split_options(p)
    p.add_argument("--checkpoint-dir", help=f"write DIR/{CHECKPOINT_NAME} after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- argument checks (before any file is read) ----------------------------------------------------------
def _check_split_options(args):
    if args.seed is not None and args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.test_fraction is not None and not 0.0 <= args.test_fraction < 1.0:
        raise ValueError(f"--test-fraction must lie in [0, 1), got {args.test_fraction}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")


def _check_training_options(args):
    """Refuse option values that would waste or corrupt a run, naming the option and the value."""
    _check_split_options(args)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    if not 0.0 <= args.momentum < 1.0:
        raise ValueError(f"--momentum must lie in [0, 1), got {args.momentum}")
    if not args.weight_decay >= 0:
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if not 0.0 <= getattr(args, "dropout", 0.0) < 1.0:
        raise ValueError(f"--dropout must lie in [0, 1), got {args.dropout}")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir")
    kfold = getattr(args, "kfold", None)
    if kfold is not None:
        if kfold < 2:
            raise ValueError(f"--kfold must be >= 2 (one fold per test part), got {kfold}")
        if args.test_fraction is not None:
            raise ValueError("--test-fraction and --kfold exclude each other: with --kfold each fold's test part "
                             "is 1/K of the clips")
        if args.workers is not None and args.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0: train the folds in this process), got {args.workers}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
    else:
        for option in ("workers", "scheduler", "threads"):
            if getattr(args, option, None) is not None:
                raise ValueError(f"--{option} applies to --kfold only (one split trains in this process)")


def _check_paths(args, *inputs):
    """The command's output paths, checked against each other and its inputs before any work."""
    check_outputs(files={"OUT": args.out}, dirs={"--checkpoint-dir": args.checkpoint_dir},
                  inputs=[args.data, *inputs])


def _open_data(path):
    """The clip data set at ``path``; an empty one is refused, naming the file."""
    from ..data.store import ClipDataset
    ds = ClipDataset(path)
    if len(ds) == 0:
        ds.close()
        raise ValueError(f"clip data set {path} holds no clips")
    return ds


# -- shared steps ---------------------------------------------------------------------------------------
def _recorded_split(meta):
    """The split recorded in a weights file's meta, or in the meta of the file it was made from
    (``source_meta``, e.g. a compressed network's); ``{}`` when none is recorded."""
    while meta:
        if meta.get("split"):
            return meta["split"]
        meta = meta.get("source_meta")
    return {}


def _split_settings(args, meta):
    """(seed, test_fraction): explicit options, else the weights file's recorded split, else the defaults."""
    recorded = _recorded_split(meta)
    seed = args.seed if args.seed is not None else recorded.get("seed", DEFAULT_SEED)
    frac = args.test_fraction if args.test_fraction is not None else recorded.get("test_fraction",
                                                                                DEFAULT_TEST_FRACTION)
    return int(seed), float(frac)


def _split(ds, seed, frac):
    from ..train import split_fingerprint, train_test_split
    train, test = train_test_split(len(ds), frac, seed, stratify=ds.labels)
    info = {"seed": seed, "test_fraction": frac, "stratified": True, "n_train": int(train.size),
            "n_test": int(test.size), "test_clips": split_fingerprint(ds, test)}
    return train, test, info


def _check_same_split(info, meta, weights):
    recorded = _recorded_split(meta)
    if recorded.get("test_clips") and recorded["test_clips"] != info["test_clips"]:
        print(f"warning: this test split differs from the one recorded in {weights} (other data, seed or "
              f"test fraction); the network may have been trained on some of these test clips", file=sys.stderr)


def _fit(args, net, ds, train, test, seed, checkpoint_dir=None, resume=None):
    from ..optim import make_optimizer
    from ..train import Subset, fit
    optimizer = make_optimizer(args.optimizer, net.parameters(), lr=args.lr, momentum=args.momentum,
                               weight_decay=args.weight_decay)
    return fit(net, Subset(ds, train), Subset(ds, test), epochs=args.epochs, optimizer=optimizer,
               batch_size=args.batch_size, seed=seed, checkpoint_dir=checkpoint_dir or args.checkpoint_dir,
               resume=args.resume if resume is None else resume, progress=False if args.no_progress else None,
               log=print)


def _settings(args):
    return {"epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr, "batch_size": args.batch_size,
            "weight_decay": args.weight_decay, **({"dropout": args.dropout} if hasattr(args, "dropout") else {}),
            **({"momentum": args.momentum} if args.optimizer == "sgd" else {})}


def _save(args, net, ds, command, seed, split, train, history, extra=None):
    """Write OUT with meta: command, data file, seed, split, settings, accuracies and history.

    If OUT cannot be written any more (its directory removed or made read-only during the run), the
    network goes beside the checkpoint (with ``--checkpoint-dir``) or into the temporary directory,
    and the path is printed: a finished run is never lost."""
    from ..io import save_model
    from ..train import Subset, evaluate
    train_acc = evaluate(net, Subset(ds, train), args.batch_size)["accuracy"]
    test_acc = history[-1]["test_acc"] if history and split["n_test"] else None  # None: no test clips
    meta = {"command": command, "data": str(Path(args.data).resolve()), "seed": seed, "split": split,
            "class_names": ds.class_names, "training": _settings(args),
            "accuracy": {"train": train_acc, "test": test_acc}, "history": history, **(extra or {})}
    candidates = [Path(args.checkpoint_dir) / f"{Path(args.out).stem}.h5"] if args.checkpoint_dir else []
    out = save_or_fallback(lambda path: save_model(path, net, meta=meta), args.out, candidates=candidates,
                           log=lambda line: print(f"warning: {line}", file=sys.stderr))
    test = f"test accuracy {100 * test_acc:.1f}% ({split['n_test']} clips)" if test_acc is not None else "no test clips"
    print(f"saved {out}: train accuracy {100 * train_acc:.1f}% ({split['n_train']} clips), {test}")


# -- commands -----------------------------------------------------------------------------------------
def run_train(args):
    _check_training_options(args)
    _check_paths(args)
    from ..models import thetis_net
    seed, frac = _split_settings(args, None)
    with _open_data(args.data) as ds:
        if args.kfold is not None:
            return _cross_validate(args, ds, seed)
        train, test, split = _split(ds, seed, frac)
        net = thetis_net(ds.clip_shape, seed=seed, num_classes=len(ds.class_names), dropout=args.dropout)
        print(f"training {net.num_parameters():,} parameters on {len(train)} clips of {ds.clip_shape}, "
              f"testing on {len(test)}")
        history = _fit(args, net, ds, train, test, seed)
        _save(args, net, ds, "train", seed, split, train, history)
    return 0


def _cross_validate(args, ds, seed):
    """The folds as executor tasks (:mod:`tuckerref.study.folds`): local worker processes by default,
    this process with ``--workers 0``, a Dask cluster with ``--scheduler``; each fold's line is printed
    as it completes, and OUT keeps the last fold's network."""
    import numpy as np

    from ..models import thetis_net
    from ..study.executor import make_executor
    from ..study.folds import make_fold_tasks, train_fold
    from ..train import kfold, split_fingerprint
    if args.kfold > len(ds):
        raise ValueError(f"--kfold {args.kfold} exceeds the {len(ds)} clips of {args.data}")
    folds = kfold(len(ds), args.kfold, seed, stratify=ds.labels)
    optimizer = {"name": args.optimizer, "lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay}
    tasks = make_fold_tasks(args.data, folds, epochs=args.epochs, optimizer=optimizer, batch_size=args.batch_size,
                            seed=seed, dropout=args.dropout, threads=1 if args.threads is None else args.threads,
                            checkpoint_dir=args.checkpoint_dir, resume=args.resume, checkpoint_name=CHECKPOINT_NAME)
    executor = make_executor(1 if args.workers is None else args.workers, args.scheduler)
    results = {}
    try:
        print(f"{args.kfold} folds of {len(ds)} clips on {executor.describe()}")
        for task, result in executor.map_unordered(train_fold, tasks):
            results[task["fold"]] = result
            print(f"fold {task['fold']}/{args.kfold}: {result['n_train']} training clips, {result['n_test']} test "
                  f"clips, test accuracy {100 * result['test_acc']:.1f}% after {len(result['history'])} epochs, "
                  f"{result['seconds']:.1f} s ({result['host']}:{result['pid']})")
    finally:
        executor.close()
    accs = [results[f]["test_acc"] for f in range(1, args.kfold + 1)]
    print("fold test accuracies: " + ", ".join(f"{100 * a:.1f}%" for a in accs) +
          f"; mean {100 * np.mean(accs):.1f}% +- {100 * np.std(accs):.1f}")
    last = results[args.kfold]
    net = thetis_net(ds.clip_shape, seed=seed, num_classes=len(ds.class_names), dropout=args.dropout)
    net.load_state_dict(last["state"])
    net.eval()
    train, test = folds[-1]
    split = {"seed": seed, "kfold": args.kfold, "fold": args.kfold, "stratified": True,
             "n_train": int(train.size), "n_test": int(test.size), "test_clips": split_fingerprint(ds, test)}
    _save(args, net, ds, "train", seed, split, train, last["history"],
          {"kfold_test_accuracy": accs, "kfold_mean_test_accuracy": float(np.mean(accs)),
           "kfold_history": [results[f]["history"] for f in range(1, args.kfold + 1)],
           "kfold_threads": last["threads"]})
    return 0


def run_finetune(args):
    _check_training_options(args)
    _check_paths(args, args.weights)
    from ..io import load_model
    from ..train import Subset, evaluate, seed_dropout
    net, meta = load_model(args.weights)
    seed, frac = _split_settings(args, meta)
    with _open_data(args.data) as ds:
        if getattr(net, "input_shape", None) is None:
            net.input_shape = ds.clip_shape
        train, test, split = _split(ds, seed, frac)
        _check_same_split(split, meta, args.weights)
        seed_dropout(net, seed)
        before = evaluate(net, Subset(ds, test), args.batch_size)["accuracy"]
        print(f"fine-tuning {args.weights} ({net.num_parameters():,} parameters, test accuracy "
              f"{100 * before:.1f}% before) on {len(train)} clips")
        history = _fit(args, net, ds, train, test, seed)
        _save(args, net, ds, "finetune", seed, split, train, history,
              {"source_weights": str(Path(args.weights).resolve()), "test_accuracy_before": before})
    return 0


def run_evaluate(args):
    _check_split_options(args)
    import numpy as np

    from ..io import load_model
    from ..train import Subset, evaluate
    net, meta = load_model(args.weights)
    seed, frac = _split_settings(args, meta)
    with _open_data(args.data) as ds:
        if getattr(net, "input_shape", None) is not None and tuple(net.input_shape) != ds.clip_shape:
            raise ValueError(f"{args.data} has clips of shape {ds.clip_shape}, {args.weights} expects "
                             f"{tuple(net.input_shape)}")
        if args.split == "test":
            _, idx, split = _split(ds, seed, frac)
            _check_same_split(split, meta, args.weights)
            what = f"test split (seed {seed}, test fraction {frac})"
        else:
            idx, what = np.arange(len(ds)), "all clips"
        if len(idx) == 0:
            raise ValueError(f"the {what} of {args.data} holds no clips (test fraction {frac}); "
                             f"use --split all or a larger --test-fraction")
        _check_finite(net, args.weights)
        ev = evaluate(net, Subset(ds, idx), args.batch_size)
        names = ds.class_names
    correct = int(np.trace(ev["confusion"]))
    print(f"{args.weights} on {args.data}, {what}: {ev['n']} clips")
    print(f"accuracy {100 * ev['accuracy']:.1f}% ({correct}/{ev['n']}), mean cross-entropy {ev['loss']:.4f}")
    print(_format_confusion(ev["confusion"], names))
    return 0


def _check_finite(net, weights):
    """Refuse a network with NaN or infinite parameters (it would score as if it predicted class 0)."""
    import numpy as np
    for name, value in net.state_dict().items():
        value = np.asarray(value)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"weights file {weights}: parameter {name!r} holds "
                             f"{int(value.size - np.isfinite(value).sum())} non-finite values (NaN or inf)")


def _format_confusion(cm, class_names):
    names = list(class_names) + [f"class{i}" for i in range(len(class_names), cm.shape[0])]
    width = max(8, *(len(n) for n in names)) + 2
    lines = ["confusion matrix (rows: true class, columns: predicted):", " " * width + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{names[i]:>{width}}" + "".join(f"{v:>{width}}" for v in row) for i, row in enumerate(cm)]
    return "\n".join(lines)

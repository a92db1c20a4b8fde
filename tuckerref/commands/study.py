"""``tuckerref study ranks``: accuracy before/after fine-tuning, parameters, FLOPs and time over a rank grid."""
from __future__ import annotations

from pathlib import Path


def register(sub):
    p = sub.add_parser("study", help="studies over a grid of settings (ranks)",
                       description="Studies that run many trainings, on local processes or a Dask cluster.")
    study_sub = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND")
    study_sub.required = True
    r = study_sub.add_parser(
        "ranks", help="compress, fine-tune, evaluate, count and time each point of a rank grid",
        description="For each grid point (EVBMF's ranks always included): compress W.h5, evaluate before "
                    "fine-tuning, fine-tune, evaluate, count parameters and FLOPs, then time the compiled "
                    "inference pass (on this machine, one point at a time, after the training phase). Records "
                    "go to OUTDIR/records.jsonl and OUTDIR/study.csv as each completes; a rerun skips what is "
                    "done; plots accuracy_vs_flops.png and accuracy_vs_time.png at the end.")
    r.add_argument("weights", metavar="W.h5", type=Path, help="trained network (weights file with its architecture)")
    r.add_argument("data", metavar="DATA.h5", type=Path, help="clip data set")
    r.add_argument("outdir", metavar="OUTDIR", type=Path, help="study directory (created; reused to continue)")
    r.add_argument("--grid", nargs="+", default=["evbmf"], metavar="ITEM",
                   help="grid items: 'evbmf', 'scale:0.25,0.5,2' (factors on EVBMF's ranks), 'energy:0.9,0.99' "
                        "(kept fraction of each mode's squared singular values), or a JSON object of per-layer "
                        "ranks '{\"c1\": [2, 2], \"l2\": 1}' (or a list of them); default: evbmf only")
    r.add_argument("--plan", choices=["table2", "algorithm1"], default="table2")
    r.add_argument("--epochs", type=int, default=4, help="fine-tuning epochs per point (default %(default)s)")
    r.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                   help="fine-tuning optimiser (default %(default)s, the demo preset's)")
    r.add_argument("--lr", type=float, default=5e-4, help="learning rate (default %(default)s)")
    r.add_argument("--momentum", type=float, default=0.7, help="SGD momentum (default %(default)s)")
    r.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (default %(default)s)")
    r.add_argument("--batch-size", type=int, default=16, help="mini-batch size (default %(default)s)")
    r.add_argument("--seed", type=int, default=None,
                   help="split, shuffling and dropout seed of every point (default: the weights file's split "
                        "seed, else 0)")
    r.add_argument("--test-fraction", type=float, default=None,
                   help="held-out fraction per class (default: the weights file's, else 0.1)")
    r.add_argument("--kfold", type=int, metavar="K", help="K-fold cross-validation: each point fine-tuned K times")
    r.add_argument("--workers", type=int, default=1,
                   help="local worker processes for training; 0 trains in this process (default %(default)s)")
    r.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="train on this Dask cluster instead (needs tuckerref[dask]; the paths must be readable "
                        "by every worker)")
    r.add_argument("--threads", type=int, default=1, help="Numba threads per training task (default %(default)s); "
                                                          "part of a point's settings: same threads, same numbers")
    r.add_argument("--time-threads", type=int, default=None,
                   help="Numba threads for the timing runs (default: Numba's)")
    r.add_argument("--time-batch", type=int, default=1, help="clips per timed batch (default %(default)s)")
    r.add_argument("--repeats", type=int, default=7,
                   help="timed runs per point; the median is reported (default %(default)s)")
    r.add_argument("--max-tasks", type=int, default=None,
                   help="train at most this many tasks now (the rest on a rerun)")
    r.set_defaults(func=run)


def run(args):
    from ..study.executor import make_executor
    from ..study.run import run_study

    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0: train in this process), got {args.workers}")
    optimizer = {"name": args.optimizer, "lr": args.lr, "weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        optimizer["momentum"] = args.momentum
    # everything is checked (grid, files, settings) inside run_study before the executor gets a task;
    # the executor is made first only because connecting to a scheduler can fail fast too
    executor = make_executor(args.workers, args.scheduler)
    try:
        rows = run_study(args.weights, args.data, args.outdir, args.grid, executor=executor, plan=args.plan,
                         epochs=args.epochs, optimizer=optimizer, batch_size=args.batch_size, seed=args.seed,
                         test_fraction=args.test_fraction, kfold=args.kfold, threads=args.threads,
                         time_batch=args.time_batch, time_repeats=args.repeats, time_threads=args.time_threads,
                         limit=args.max_tasks)
    finally:
        executor.close()
    done = [r for r in rows if r.get("acc_after") is not None]
    print(f"{len(done)} of {len(rows)} points complete; summary {args.outdir / 'study.csv'}")
    return 0

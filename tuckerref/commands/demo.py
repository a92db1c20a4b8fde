"""``tuckerref demo``: the paper's whole workflow on the built-in synthetic data set.

synthesize -> train the original network -> one-shot Tucker compression (Table 2 plan, VBMF ranks)
-> fine-tune -> evaluate both on the same held-out split -> report (Markdown + JSON) with
accuracies, ranks, and parameters and FLOPs per layer. Every stage writes its result atomically
under the run directory; ``--resume`` continues an interrupted run from the last completed stage
(and from the last epoch checkpoint inside a training stage).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from ..outputs import check_outputs
from .defaults import CHECKPOINT_NAME

# NumPy and the engine are imported inside the functions that use them (see tuckerref.cli).


@dataclass(frozen=True)
class Preset:
    """Everything that defines a demo run besides the seed."""

    shape: tuple            # (F, H, W) of the clips; 4 channels
    n: int                  # clips in the synthetic data set
    epochs: int             # training epochs of the original network
    finetune_epochs: int    # fine-tuning epochs of the compressed network
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    test_fraction: float
    dropout: float          # the network's dropout probability
    left_handed: float      # share of mirrored (left-handed) players in the synthetic data


PRESETS = {
    # Small clips, same layer types and proportions: the README's main command (<= 10 min on 2 cores).
    # Adam at 5e-4 leaves the initial plateau within about ten epochs where the paper's SGD needs many
    # more; dropout only delays that on a few hundred clips. With 5 % left-handers (the generator's
    # default is 15 %) the swing direction alone decides nearly every clip, so the small training set
    # suffices; the depth cue that tells a mirrored player apart needs more data than the demo has time for.
    "demo": Preset(shape=(16, 48, 64), n=300, epochs=16, finetune_epochs=4, optimizer="adam", lr=5e-4,
                   momentum=0.0, weight_decay=0.0, batch_size=16, test_fraction=0.25, dropout=0.0,
                   left_handed=0.05),
    # The paper's clip size, data-set size, optimiser and dropout (docs/method.md section 10); hours on 2 cores.
    "paper": Preset(shape=(28, 120, 160), n=327, epochs=100, finetune_epochs=100, optimizer="sgd", lr=1e-3,
                    momentum=0.7, weight_decay=0.01, batch_size=20, test_fraction=0.1, dropout=0.2,
                    left_handed=0.15),
}


def register(sub):
    p = sub.add_parser("demo", help="synthesize -> train -> compress -> fine-tune -> evaluate -> report",
                       description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<UTC timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed stage")
    p.add_argument("--data", type=Path, default=None,
                   help="use this clip data set (e.g. from 'tuckerref data thetis') instead of synthesizing one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, help="synthetic clips (overrides the preset)")
    p.add_argument("--epochs", type=int, help="training epochs (overrides the preset)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (overrides the preset)")
    p.add_argument("--plan", choices=["table2", "algorithm1"], default="table2")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _preset(args) -> Preset:
    preset = PRESETS[args.preset]
    for field in ("n", "epochs", "finetune_epochs"):
        value = getattr(args, field)
        if value is not None:
            if value < (1 if field == "n" else 0):
                raise ValueError(f"--{field.replace('_', '-')} must be >= {1 if field == 'n' else 0}, got {value}")
            preset = replace(preset, **{field: value})
    return preset


def _run_dir(args) -> Path:
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out DIR, the run directory to continue")
        if not args.out.is_dir():
            raise ValueError(f"cannot resume: run directory {args.out} does not exist")
        return args.out
    out = args.out or Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"run directory {out} is not empty; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _dataset_path(args, preset: Preset, run: Path) -> Path:
    from ..data.synthetic import synthesize
    if args.data is not None:
        return args.data
    path = run / "data.h5"
    if not path.exists():
        synthesize(path, n=preset.n, seed=args.seed, shape=preset.shape, left_handed_fraction=preset.left_handed,
                   progress=not args.no_progress)
    return path


def _optimizer(net, preset: Preset):
    from ..optim import make_optimizer
    if preset.optimizer == "sgd":
        return make_optimizer("sgd", net.parameters(), lr=preset.lr, momentum=preset.momentum,
                              weight_decay=preset.weight_decay)
    return make_optimizer(preset.optimizer, net.parameters(), lr=preset.lr, weight_decay=preset.weight_decay)


def _train_stage(name, net, epochs, train, test, preset, args, run, log):
    """Train ``net`` (resumable) and save it as ``run/<name>.h5``; reuse that file if it exists."""
    from ..io import load_model, save_model
    from ..train import fit
    path = run / f"{name}.h5"
    if path.exists():
        log(f"[{name}] already done: loading {path}")
        net, meta = load_model(path)
        return net, meta.get("history", [])
    ckpt = run / f"checkpoint_{name}"
    resume = (ckpt / CHECKPOINT_NAME).exists()
    history = fit(net, train, test, epochs=epochs, optimizer=_optimizer(net, preset), batch_size=preset.batch_size,
                  seed=args.seed, checkpoint_dir=ckpt, resume=resume,
                  progress=False if args.no_progress else None, log=lambda line: log(f"[{name}] {line}"))
    save_model(path, net, meta={"stage": name, "seed": args.seed, "history": history})
    return net, history


def _layer_rows(before, after):
    rows = []
    for layer in (rec for rec in before.layers if rec.params):
        comp = after[layer.name]
        rows.append({"layer": layer.name, "params_before": layer.params, "params_after": comp.params,
                     "flops_before": layer.flops, "flops_after": comp.flops,
                     "sub_flops_after": [c.flops for c in comp.children]})
    return rows


def run(args):
    from ..compress import compress_network, format_report
    from ..data.store import ClipDataset
    from ..flops import count_network
    from ..models import thetis_net
    from ..report import write_json, write_text
    from ..train import Subset, evaluate, train_test_split
    t_start = time.perf_counter()
    preset = _preset(args)
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    check_outputs(dirs={"--out": args.out}, inputs=[args.data])
    run_dir = _run_dir(args)

    def log(line):
        print(line, flush=True)
        with open(run_dir / "log.txt", "a") as f:
            f.write(line + "\n")

    log(f"tuckerref demo: preset {args.preset} {preset}, seed {args.seed}, run directory {run_dir}")
    data_path = _dataset_path(args, preset, run_dir)
    with ClipDataset(data_path) as ds:
        train_idx, test_idx = train_test_split(len(ds), preset.test_fraction, seed=args.seed, stratify=ds.labels)
        train, test = Subset(ds, train_idx), Subset(ds, test_idx)
        log(f"data {data_path}: {len(ds)} clips of {ds.clip_shape}; {len(train)} train / {len(test)} test")

        original, hist_orig = _train_stage("original", thetis_net(ds.clip_shape, seed=args.seed, dropout=preset.dropout), preset.epochs,
                                           train, test, preset, args, run_dir, log)
        ev_orig = evaluate(original, test, preset.batch_size)
        log(f"original: test accuracy {100 * ev_orig['accuracy']:.1f}%")

        compressed, layer_report = compress_network(original, plan=args.plan, ranks="vbmf", report=True)
        log("compression (plan %s, VBMF ranks):\n%s" % (args.plan, format_report(layer_report)))
        ev_comp0 = evaluate(compressed, test, preset.batch_size)
        log(f"compressed before fine-tuning: test accuracy {100 * ev_comp0['accuracy']:.1f}%")

        compressed, hist_ft = _train_stage("compressed", compressed, preset.finetune_epochs, train, test, preset,
                                           args, run_dir, log)
        ev_comp = evaluate(compressed, test, preset.batch_size)
        log(f"compressed after fine-tuning: test accuracy {100 * ev_comp['accuracy']:.1f}%")

    counts_o, counts_c = count_network(original), count_network(compressed)
    acc_o, acc_c = ev_orig["accuracy"], ev_comp["accuracy"]
    checks = {"original_at_least_90": acc_o >= 0.90, "compressed_within_3_points": acc_c >= acc_o - 0.03}
    result = {
        "preset": args.preset, "settings": preset.__dict__ | {"shape": list(preset.shape)}, "seed": args.seed,
        "plan": args.plan, "data": str(data_path), "n_train": len(train_idx), "n_test": len(test_idx),
        "accuracy": {"original": acc_o, "compressed_before_finetune": ev_comp0["accuracy"], "compressed": acc_c},
        "confusion": {"original": ev_orig["confusion"].tolist(), "compressed": ev_comp["confusion"].tolist()},
        "checks": checks,
        "layers": [r.as_dict() for r in layer_report],
        "counts": _layer_rows(counts_o, counts_c),
        "totals": {"params_before": counts_o.params, "params_after": counts_c.params,
                   "flops_before": counts_o.flops, "flops_after": counts_c.flops},
        "history": {"original": hist_orig, "finetune": hist_ft},
        "seconds": time.perf_counter() - t_start,
    }
    write_json(run_dir / "report.json", result)
    write_text(run_dir / "report.md", _markdown(result))
    log(_summary(result))
    log(f"report: {run_dir / 'report.md'} and {run_dir / 'report.json'}; weights: {run_dir / 'original.h5'}, "
        f"{run_dir / 'compressed.h5'}")
    return 0


def _pct(x):
    return f"{100 * x:.1f}%"


def _summary(r) -> str:
    a, t = r["accuracy"], r["totals"]
    ok = "yes" if r["checks"]["original_at_least_90"] else "NO"
    close = "yes" if r["checks"]["compressed_within_3_points"] else "NO"
    return (f"test accuracy: original {_pct(a['original'])} (>= 90%: {ok}), compressed {_pct(a['compressed'])} "
            f"(within 3 points: {close}); parameters {t['params_before']:,} -> {t['params_after']:,} "
            f"(x{t['params_before'] / t['params_after']:.2f}); FLOPs {t['flops_before']:,} -> {t['flops_after']:,} "
            f"(x{t['flops_before'] / t['flops_after']:.2f}); {r['seconds'] / 60:.1f} min")


def _markdown(r) -> str:
    from ..report import markdown_table
    a, t = r["accuracy"], r["totals"]
    lines = [f"# tuckerref demo ({r['preset']} preset, seed {r['seed']})", "",
             f"Data: `{r['data']}`, {r['n_train']} training / {r['n_test']} test clips of shape "
             f"4 x {' x '.join(map(str, r['settings']['shape']))}. Plan `{r['plan']}`, ranks from EVBMF.", "",
             "## Accuracy on the held-out test split", "",
             markdown_table(["network", "test accuracy"], [
                 ["original", _pct(a["original"])],
                 ["compressed, before fine-tuning", _pct(a["compressed_before_finetune"])],
                 ["compressed, fine-tuned", _pct(a["compressed"])]]), "",
             f"- original >= 90 %: **{'yes' if r['checks']['original_at_least_90'] else 'no'}**",
             f"- fine-tuned compressed within 3 points of the original: "
             f"**{'yes' if r['checks']['compressed_within_3_points'] else 'no'}**", "",
             "## Compression per layer", "",
             markdown_table(["layer", "method", "ranks", "params before", "params after", "kernel rel. error"],
                            [[row["name"], row["method"], ", ".join(map(str, row["ranks"])) or "-",
                              f"{row['params_before']:,}", f"{row['params_after']:,}", f"{row['rel_error']:.3f}"]
                             for row in r["layers"]]), "",
             "## Parameters and FLOPs per layer (paper's FLOP convention, one clip)", "",
             markdown_table(["layer", "params", "compressed", "FLOPs", "compressed (sub-layers)", "x FLOPs"],
                            [[c["layer"], f"{c['params_before']:,}", f"{c['params_after']:,}", f"{c['flops_before']:,}",
                              f"{c['flops_after']:,}" + (f" ({' + '.join(f'{v:,}' for v in c['sub_flops_after'])})"
                                                         if c["sub_flops_after"] else ""),
                              f"{c['flops_before'] / c['flops_after']:.2f}"] for c in r["counts"]]
                            + [["total", f"{t['params_before']:,}", f"{t['params_after']:,}", f"{t['flops_before']:,}",
                                f"{t['flops_after']:,}", f"{t['flops_before'] / t['flops_after']:.2f}"]]), "",
             "## Training", "",
             markdown_table(["stage", "epoch", "train loss", "train acc", "test acc", "seconds"],
                            [[stage, h["epoch"], f"{h['train_loss']:.4f}", _pct(h["train_acc"]), _pct(h["test_acc"]),
                              f"{h['seconds']:.1f}"]
                             for stage in ("original", "finetune") for h in r["history"][stage]]), "",
             f"Total wall time {r['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)

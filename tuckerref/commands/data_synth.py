"""``tuckerref data synth``: write the synthetic THETIS-like data set (:mod:`tuckerref.data.synthetic`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import check_outputs
from .defaults import LEFT_HANDED_FRACTION
from .defaults import SYNTH_SHAPE as DEFAULT_SHAPE


def register(data_sub):
    p = data_sub.add_parser(
        "synth", help="generate synthetic forehand/backhand clips (no download)",
        description="Render N clips (R, G, B, depth) of a figure swinging a racket: forehand (label 0) "
                    "or backhand (label 1), told apart only by the direction of the swing. Clip i depends "
                    "only on (seed, i), so any subset can be regenerated.")
    p.add_argument("out", metavar="OUT.h5", type=Path, help="output data set")
    p.add_argument("--n", type=int, default=327, help="number of clips (default: %(default)s, as the paper)")
    p.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE), metavar=("F", "H", "W"),
                   help="frames, height, width (default: %(default)s, as the paper)")
    p.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True,
                   help="one clip of each class per consecutive pair (default); --no-balance draws "
                        "each label independently")
    p.add_argument("--left-handed", type=float, default=LEFT_HANDED_FRACTION, metavar="FRACTION",
                   help="probability that a player is left-handed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args):
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if min(args.shape) < 1:
        raise ValueError(f"--shape sizes must be >= 1, got {args.shape}")
    if not 0.0 <= args.left_handed <= 1.0:
        raise ValueError(f"--left-handed must lie in [0, 1], got {args.left_handed}")
    check_outputs(files={"OUT.h5": args.out})
    from ..data.store import ClipDataset
    from ..data.synthetic import synthesize
    path = synthesize(args.out, args.n, args.seed, tuple(args.shape), balance=args.balance,
                      left_handed_fraction=args.left_handed, progress=not args.no_progress)
    with ClipDataset(path) as ds:
        counts = ", ".join(f"{int((ds.labels == k).sum())} {name}" for k, name in enumerate(ds.class_names))
        left = int(ds.metadata["left_handed"].sum())
        print(f"wrote {path}: {len(ds)} clips of shape {ds.clip_shape} ({counts}; {left} left-handed)")
    return 0

"""``tuckerref data digits``: write the moving-digit clips (:mod:`tuckerref.data.digits`)."""
from __future__ import annotations

from pathlib import Path

from .defaults import DIGITS_CHANNEL_CHOICES, DIGITS_CHANNELS, DIGITS_SHAPE


def register(data_sub):
    p = data_sub.add_parser(
        "digits", help="generate 10-class moving-digit clips from scikit-learn's bundled digits (no download)",
        description="Render N clips of one of scikit-learn's 1,797 handwritten 8x8 digits, scaled up, moving "
                    "across a cluttered, noisy frame along its class's direction (36 degrees per class); label = "
                    "the digit. Clip i depends only on (seed, i); the first 1,740 clips show distinct digit images.")
    p.add_argument("out", metavar="OUT.h5", type=Path, help="output data set")
    p.add_argument("--n", type=int, default=1000, help="number of clips (default: %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, default=list(DIGITS_SHAPE), metavar=("F", "H", "W"),
                   help="frames, height, width (default: %(default)s, the demo preset's)")
    p.add_argument("--channels", type=int, default=DIGITS_CHANNELS, choices=DIGITS_CHANNEL_CHOICES,
                   help="4: R, G, B, depth (the paper's network); 3: R, G, B; 1: grey (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="data set seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args):
    from ..data.digits import check_shape, write_digits
    from ..data.store import ClipDataset

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    try:
        shape = check_shape(args.shape)
    except ValueError as exc:
        raise ValueError(f"--shape: {exc}") from None
    path = write_digits(args.out, args.n, args.seed, shape, args.channels, progress=not args.no_progress)
    with ClipDataset(path) as ds:
        counts = " ".join(str(int((ds.labels == k).sum())) for k in range(len(ds.class_names)))
        print(f"wrote {path}: {len(ds)} clips of shape {ds.clip_shape} (clips per class 0..9: {counts}; "
              f"the first {ds.attrs['distinct_images']} show pairwise distinct digit images)")
    return 0

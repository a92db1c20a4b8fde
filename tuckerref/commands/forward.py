"""``tuckerref forward``: one timed forward pass of the paper network on a random clip."""
from __future__ import annotations

import time

from .defaults import PAPER_INPUT_SHAPE


def register(sub):
    p = sub.add_parser("forward", help="time a forward pass of the paper network on a random clip")
    p.add_argument("--input-shape", type=int, nargs=4, default=PAPER_INPUT_SHAPE, metavar=("C", "F", "H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args):
    import numpy as np

    from ..models import thetis_net
    from ..nn import no_grad
    if args.batch < 1 or args.repeats < 1:
        raise ValueError(f"--batch and --repeats must be >= 1, got {args.batch} and {args.repeats}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    shape = tuple(args.input_shape)
    net = thetis_net(shape, seed=args.seed).eval()
    x = np.random.default_rng(args.seed).random((args.batch,) + shape, dtype=np.float32)
    with no_grad():
        t0 = time.perf_counter()
        y = net(x)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            y = net(x)
            times.append(time.perf_counter() - t0)
    print(f"input {x.shape} -> logits {y.shape}; {net.num_parameters():,} parameters")
    print(f"first call (includes JIT compile or cache load) {first * 1e3:.1f} ms; "
          f"median of {args.repeats} {np.median(times) * 1e3:.1f} ms")
    print("logits[0]:", np.array2string(y[0], precision=4))
    return 0

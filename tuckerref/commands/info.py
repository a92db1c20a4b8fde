"""``tuckerref info``: versions, threads and the paper network's layer shapes."""
from __future__ import annotations

import platform

from .. import __version__
from .defaults import PAPER_INPUT_SHAPE


def register(sub):
    p = sub.add_parser("info", help="print versions, thread count and the paper network's shapes")
    p.add_argument("--input-shape", type=int, nargs=4, default=PAPER_INPUT_SHAPE, metavar=("C", "F", "H", "W"))
    p.set_defaults(func=run)


def run(args):
    import numba
    import numpy as np

    from ..models import thetis_net
    print(f"tuckerref {__version__}  numpy {np.__version__}  numba {numba.__version__}  "
          f"python {platform.python_version()}  threads {numba.get_num_threads()}")
    net = thetis_net(tuple(args.input_shape), seed=0)
    print(f"network for input {tuple(args.input_shape)}: {net.num_parameters():,} parameters")
    for name, shape in net.shapes(tuple(args.input_shape)):
        m = net[name]
        n = m.num_parameters()
        print(f"  {name:<8} {type(m).__name__:<10} -> {str(shape):<22} {n:>9,} params" if n else
              f"  {name:<8} {type(m).__name__:<10} -> {shape}")
    return 0

"""Whole network, tuckerref against PyTorch CPU in the same run: forward passes and one training step.

Both engines hold the same weights in equivalent modules (torch: a real ``torch.nn.Sequential``) and
see the same random clips. ``--network paper``: the paper network and its Table 2 compression with
the paper's ranks. ``--network c3d``: C3D (``--width``, ``--batch-norm``, input 3 x 16 x 112 x 112 by
default) and its compression by Algorithm 1 with ``--ranks`` (default ``fraction:0.25``: on random
weights EVBMF finds no signal and picks rank 1 everywhere; BatchNorm folded first; saved to and
loaded from ``--cache`` since the decompositions of the full-size network take minutes):

* forward pass (inference: ``no_grad`` in both engines) at batch 1 and at ``--batch``;
* one training step at ``--batch``: forward, mean cross-entropy, backward, SGD with the paper's
  settings (lr 0.001, momentum 0.7, weight decay 0.01); dropout is off in both so that the steps
  compute the same function, and both first-step losses are printed as a check.

Each figure is the median of ``--repeats`` timed calls after one untimed warm-up call (which compiles
tuckerref's kernels); torch / tuckerref > 1 means tuckerref is faster.

    .venv/bin/python bench/whole_network.py [--batch 8] [--repeats 3] [--threads 2] [--input-shape 4 28 120 160]
    .venv/bin/python bench/whole_network.py --network c3d --batch 1 --skip-train
    .venv/bin/python bench/whole_network.py --network c3d --width 0.25 --batch-norm --input-shape 3 16 56 56 \
        --batch 8 --skip-forward --skip-compressed
"""
from __future__ import annotations

import argparse
import sys
import time

import numba
import numpy as np

try:
    import torch
except ImportError:
    sys.exit("bench/train_step.py needs PyTorch (pip install torch==2.13.0); it is not installed")

from tuckerref.allocation import keep_freed_memory
from tuckerref.compress import compress_network
from tuckerref.kernels import softmax_cross_entropy
from tuckerref.flops import count_network
from tuckerref.io import load_model, save_model
from tuckerref.models import C3D_INPUT_SHAPE, PAPER_INPUT_SHAPE, c3d, thetis_net
from tuckerref.nn import (AdaptiveAvgPool3d, AvgPool3d, BatchNorm3d, Conv3d, Flatten, Identity, Linear, MaxPool3d, ReLU,
                          Sequential, no_grad)
from tuckerref.optim import SGD


def to_torch(m):
    """An equivalent torch module holding copies of the engine module's parameters (dropout omitted)."""
    if isinstance(m, Sequential):
        return torch.nn.Sequential(*[to_torch(c) for c in m.children() if to_torch(c) is not None])
    if isinstance(m, Conv3d):
        t = torch.nn.Conv3d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
    elif isinstance(m, Linear):
        t = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    elif isinstance(m, BatchNorm3d):
        t = torch.nn.BatchNorm3d(m.num_features, eps=m.eps, momentum=m.momentum)
        with torch.no_grad():
            for name in ("running_mean", "running_var"):
                getattr(t, name).copy_(torch.from_numpy(getattr(m, name)))
    elif isinstance(m, MaxPool3d):
        return torch.nn.MaxPool3d(m.kernel_size, m.stride, m.padding)
    elif isinstance(m, AvgPool3d):
        return torch.nn.AvgPool3d(m.kernel_size, m.stride, m.padding, count_include_pad=m.count_include_pad,
                                  divisor_override=m.divisor_override)
    elif isinstance(m, AdaptiveAvgPool3d):
        return torch.nn.AdaptiveAvgPool3d(m.output_size)
    elif isinstance(m, Identity):
        return torch.nn.Identity()
    elif isinstance(m, ReLU):
        return torch.nn.ReLU()
    elif isinstance(m, Flatten):
        return torch.nn.Flatten()
    else:
        return None  # dropout: off in both engines
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(m.weight.data))
        if m.bias is not None:
            t.bias.copy_(torch.from_numpy(m.bias.data))
    return t


def engine_step(net, opt, x, y):
    opt.zero_grad()
    loss, grad = softmax_cross_entropy(net.forward(x), y)
    net.backward(grad)
    opt.step()
    return loss


def torch_step(net, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def engine_forward(net, x):
    with no_grad():
        return net.forward(x)


def torch_forward(net, x):
    with torch.no_grad():
        return net(x)


def median_time(step, repeats):
    first = step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def networks(args, shape):
    """(original, compressed) of ``--network`` for clips of ``shape``."""
    if args.network == "paper":
        original = thetis_net(shape, seed=0, dropout=0.0)
        ranks = "paper" if shape == PAPER_INPUT_SHAPE else {"c1": (2, 2), "c2": (2, 3), "l1": (4, 7), "l2": 1}
        return original, None if args.skip_compressed else compress_network(original, plan="table2", ranks=ranks,
                                                                            method="hosvd")
    original = c3d(shape, num_classes=args.classes, width=args.width, batch_norm=args.batch_norm, dropout=0.0, seed=0)
    if args.skip_compressed:
        return original, None
    key = (f"c3d-w{args.width}-bn{int(args.batch_norm)}-{'x'.join(map(str, shape))}-{args.classes}-"
           f"{args.ranks.replace(':', '')}.h5")
    path = args.cache / key if args.cache else None
    if path is not None and path.exists():
        return original, load_model(path)[0]
    compressed = compress_network(original.eval(), plan="algorithm1", ranks=args.ranks)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, compressed)
    return original, compressed


def main(argv=None):
    from pathlib import Path
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", choices=("paper", "c3d"), default="paper")
    p.add_argument("--width", type=float, default=1.0, help="C3D's channel scale")
    p.add_argument("--batch-norm", action="store_true", help="C3D with BatchNorm3d after each convolution")
    p.add_argument("--classes", type=int, default=101, help="C3D's classes")
    p.add_argument("--ranks", default="fraction:0.25", help="C3D's compression ranks (see tuckerref compress)")
    p.add_argument("--cache", type=Path, default=Path("runs/whole_network"), help="compressed C3D networks")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    p.add_argument("--input-shape", type=int, nargs=4, default=None, metavar=("C", "F", "H", "W"))
    p.add_argument("--skip-forward", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-compressed", action="store_true")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc keeps freed blocks of up to 32 MiB in the heap (tuckerref.allocation; the policy "
                        "tuckerref's training sets), for both engines; default: the allocator as the process starts")
    args = p.parse_args(argv)
    if args.keep_freed_memory:
        keep_freed_memory()  # both engines: freed arrays stay in the heap between calls
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    shape = tuple(args.input_shape or (PAPER_INPUT_SHAPE if args.network == "paper" else C3D_INPUT_SHAPE))
    rng = np.random.default_rng(0)
    x = rng.random((args.batch,) + shape, dtype=np.float32)
    original, compressed = networks(args, shape)
    y = np.arange(args.batch) % list(original.children())[-1].out_features
    nets = [("original", original)] + ([("compressed", compressed)] if compressed is not None else [])
    print(f"{args.network} clips {shape}, {args.threads} thread(s), median of {args.repeats} after a warm-up call")
    print(f"{'network':<12} {'what':<22} {'tuckerref ms':>13} {'torch ms':>10} {'torch/tuckerref':>16}")
    forward = {}
    flops = {name: count_network(net, shape).flops for name, net in nets}
    for name, net in nets if not args.skip_forward else ():
        tnet = to_torch(net)
        net.eval(), tnet.eval()
        for batch in sorted({1, args.batch}):
            xb = x[:batch]
            out_e, t_e = median_time(lambda: engine_forward(net, xb), args.repeats)
            out_t, t_t = median_time(lambda: torch_forward(tnet, torch.from_numpy(xb)), args.repeats)
            err = float(np.abs(out_e - out_t.numpy()).max() / max(np.abs(out_t.numpy()).max(), 1e-30))
            forward[name, batch] = t_e, t_t
            print(f"{name:<12} {f'forward, batch {batch}':<22} {1e3 * t_e:>13.1f} {1e3 * t_t:>10.1f} {t_t / t_e:>16.2f}"
                  f"   logits rel. diff {err:.1e}")
    for batch in sorted({1, args.batch}):
        if ("compressed", batch) in forward:
            (oe, ot), (ce, ct) = forward["original", batch], forward["compressed", batch]
            print(f"batch {batch}: compressed/original speed-up tuckerref x{oe / ce:.2f}, torch x{ot / ct:.2f}, "
                  f"FLOPs x{flops['original'] / flops['compressed']:.2f}")
    for name, net in nets if not args.skip_train else ():
        net.train()
        tnet = to_torch(net).train()
        opt = SGD(net.parameters(), lr=1e-3, momentum=0.7, weight_decay=0.01)
        topt = torch.optim.SGD(tnet.parameters(), lr=1e-3, momentum=0.7, weight_decay=0.01)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        loss_e, t_e = median_time(lambda: engine_step(net, opt, x, y), args.repeats)
        loss_t, t_t = median_time(lambda: torch_step(tnet, topt, tx, ty), args.repeats)
        print(f"{name:<12} {f'train step, batch {args.batch}':<22} {1e3 * t_e:>13.1f} {1e3 * t_t:>10.1f} "
              f"{t_t / t_e:>16.2f}   first-step loss tuckerref {loss_e:.6f}, torch {loss_t:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole network, tuckerref against PyTorch CPU in the same run: forward passes and one training step.

Both engines hold the same weights (the paper network, and its Table 2 compression with the paper's
ranks) in equivalent modules (torch: a real ``torch.nn.Sequential``) and see the same random clips:

* forward pass (inference: ``no_grad`` in both engines) at batch 1 and at ``--batch``;
* one training step at ``--batch``: forward, mean cross-entropy, backward, SGD with the paper's
  settings (lr 0.001, momentum 0.7, weight decay 0.01); dropout is off in both so that the steps
  compute the same function, and both first-step losses are printed as a check.

Each figure is the median of ``--repeats`` timed calls after one untimed warm-up call (which compiles
tuckerref's kernels); torch / tuckerref > 1 means tuckerref is faster.

    .venv/bin/python bench/whole_network.py [--batch 8] [--repeats 3] [--threads 2] [--input-shape 4 28 120 160]
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

from tuckerref.compress import compress_network
from tuckerref.kernels import softmax_cross_entropy
from tuckerref.models import PAPER_INPUT_SHAPE, thetis_net
from tuckerref.nn import Conv3d, Flatten, Linear, MaxPool3d, ReLU, Sequential, no_grad
from tuckerref.optim import SGD


def to_torch(m):
    """An equivalent torch module holding copies of the engine module's parameters (dropout omitted)."""
    if isinstance(m, Sequential):
        return torch.nn.Sequential(*[to_torch(c) for c in m.children() if to_torch(c) is not None])
    if isinstance(m, Conv3d):
        t = torch.nn.Conv3d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
    elif isinstance(m, Linear):
        t = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
    elif isinstance(m, MaxPool3d):
        return torch.nn.MaxPool3d(m.kernel_size, m.stride, m.padding)
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    p.add_argument("--input-shape", type=int, nargs=4, default=PAPER_INPUT_SHAPE, metavar=("C", "F", "H", "W"))
    args = p.parse_args(argv)
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    shape = tuple(args.input_shape)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch,) + shape, dtype=np.float32)
    y = np.arange(args.batch) % 2
    original = thetis_net(shape, seed=0, dropout=0.0)
    ranks = "paper" if shape == PAPER_INPUT_SHAPE else {"c1": (2, 2), "c2": (2, 3), "l1": (4, 7), "l2": 1}
    compressed = compress_network(original, plan="table2", ranks=ranks, method="hosvd")
    print(f"clips {shape}, {args.threads} thread(s), median of {args.repeats} after a warm-up call")
    print(f"{'network':<12} {'what':<22} {'tuckerref ms':>13} {'torch ms':>10} {'torch/tuckerref':>16}")
    for name, net in (("original", original), ("compressed", compressed)):
        tnet = to_torch(net)
        net.eval(), tnet.eval()
        for batch in sorted({1, args.batch}):
            xb = x[:batch]
            _, t_e = median_time(lambda: engine_forward(net, xb), args.repeats)
            _, t_t = median_time(lambda: torch_forward(tnet, torch.from_numpy(xb)), args.repeats)
            print(f"{name:<12} {f'forward, batch {batch}':<22} {1e3 * t_e:>13.1f} {1e3 * t_t:>10.1f} {t_t / t_e:>16.2f}")
    for name, net in (("original", original), ("compressed", compressed)):
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

"""Video CNNs: the paper's Figure 1 network (``thetis_net``, docs/method.md section 1) and C3D (Tran et al. 2015, ``c3d``)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .nn import (AdaptiveAvgPool3d, BatchNorm3d, Conv3d, Dropout, Dropout3d, Flatten, Linear, MaxPool3d, ReLU,
                 Sequential)
from .nn.init import as_rng

PAPER_INPUT_SHAPE = (4, 28, 120, 160)


def thetis_net(input_shape=PAPER_INPUT_SHAPE, seed=None, num_classes=2, dropout=0.2, dtype=np.float32):
    """LeNet-like early-fusion 3-D CNN with children c1, c2, l1, l2, l_out.

    c1 Conv3d(C -> 6, (5, 11, 11), pad (2, 5, 5)) + ReLU, MaxPool3d((2, 4, 4)) + Dropout3d;
    c2 Conv3d(6 -> 16, (3, 5, 5)) + ReLU, MaxPool3d((2, 4, 4)) + Dropout3d;
    flatten; l1 Linear(-> 128) + ReLU + Dropout; l2 Linear(128 -> 84) + ReLU + Dropout; l_out Linear(84 -> classes).
    For the paper's (4, 28, 120, 160) clips l1 is Linear(5184 -> 128); other clip shapes change only l1's fan-in.

    Each convolution's ReLU is applied after its max-pooling (children ``c1, pool1, relu1``). The two
    commute exactly, relu(max(x)) = max(relu(x)), and so do their gradients (a window whose maximum is
    <= 0 passes no gradient either way), so the network is the paper's; the ReLU just touches 32x
    fewer values than it would on the convolution's full-resolution output.
    """
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, F, H, W) with positive sizes, got {input_shape}")
    rng = as_rng(seed)
    layers = OrderedDict()
    layers["c1"] = Conv3d(input_shape[0], 6, (5, 11, 11), padding=(2, 5, 5), rng=rng, dtype=dtype)
    layers["pool1"] = MaxPool3d((2, 4, 4))
    layers["relu1"] = ReLU(inplace=True)
    layers["drop1"] = Dropout3d(dropout, rng=rng)
    layers["c2"] = Conv3d(6, 16, (3, 5, 5), rng=rng, dtype=dtype)
    layers["pool2"] = MaxPool3d((2, 4, 4))
    layers["relu2"] = ReLU(inplace=True)
    layers["drop2"] = Dropout3d(dropout, rng=rng)
    layers["flatten"] = Flatten()
    features = Sequential(OrderedDict(list(layers.items())))
    try:
        volume = features.output_shape(input_shape)
    except ValueError as exc:
        raise ValueError(f"input_shape {input_shape} is too small for the network: {exc}") from None
    layers["l1"] = Linear(volume[0], 128, rng=rng, dtype=dtype)
    layers["relu3"] = ReLU(inplace=True)
    layers["drop3"] = Dropout(dropout, rng=rng)
    layers["l2"] = Linear(128, 84, rng=rng, dtype=dtype)
    layers["relu4"] = ReLU(inplace=True)
    layers["drop4"] = Dropout(dropout, rng=rng)
    layers["l_out"] = Linear(84, num_classes, rng=rng, dtype=dtype)
    net = Sequential(layers)
    net.c1.needs_input_grad = False
    net.input_shape = input_shape
    return net


C3D_INPUT_SHAPE = (3, 16, 112, 112)

#: C3D's convolutions (suffix, output channels at width 1) and the pooling after some of them.
C3D_CONVOLUTIONS = (("1a", 64), ("2a", 128), ("3a", 256), ("3b", 256), ("4a", 512), ("4b", 512), ("5a", 512),
                    ("5b", 512))
C3D_POOLS = {"1a": ("pool1", (1, 2, 2), (0, 0, 0)), "2a": ("pool2", (2, 2, 2), (0, 0, 0)),
             "3b": ("pool3", (2, 2, 2), (0, 0, 0)), "4b": ("pool4", (2, 2, 2), (0, 0, 0)),
             "5b": ("pool5", (2, 2, 2), (0, 1, 1))}


def c3d(input_shape=C3D_INPUT_SHAPE, num_classes=487, width=1.0, batch_norm=False, dropout=0.5, head="fc",
        seed=None, dtype=np.float32):
    """C3D (Tran et al. 2015, "Learning Spatiotemporal Features with 3D Convolutional Networks") as a flat
    Sequential.

    Eight 3x3x3 convolutions (stride 1, padding 1) with 64, 128, 256, 256, 512, 512, 512, 512 output
    channels, each followed by a ReLU (and, with ``batch_norm``, a BatchNorm3d between the two):
    children ``conv1a, [bn1a], relu1a, pool1, conv2a, ..., pool2, conv3a, conv3b, pool3, conv4a, conv4b,
    pool4, conv5a, conv5b, pool5, flatten, fc6, relu6, drop6, fc7, relu7, drop7, fc8``. pool1 is a max
    pooling (1, 2, 2), pool2 to pool4 (2, 2, 2), pool5 (2, 2, 2) with padding (0, 1, 1), so a
    (3, 16, 112, 112) clip leaves 512 x 1 x 4 x 4 = 8192 features for fc6 (4096 wide), fc7 (4096) and
    fc8 (``num_classes``; Sports-1M's 487 by default). ``head="gap"`` replaces pool5 by global average
    pooling (AdaptiveAvgPool3d(1)), which suits any clip size. ``width`` scales every channel count and
    both hidden linear widths (rounded, at least 1). At full size: about 38.5 G multiply-accumulates
    per clip in the convolutions and 27.7 M convolution parameters.
    """
    input_shape = tuple(int(v) for v in input_shape)
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, F, H, W) with positive sizes, got {input_shape}")
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"width must be a positive number, got {width!r}")
    if head not in ("fc", "gap"):
        raise ValueError(f"head must be 'fc' (max pooling pool5) or 'gap' (global average pooling), got {head!r}")
    rng = as_rng(seed)

    def scaled(n):
        return max(1, int(round(n * width)))

    layers = OrderedDict()
    channels = input_shape[0]
    for suffix, out in C3D_CONVOLUTIONS:
        out = scaled(out)
        layers[f"conv{suffix}"] = Conv3d(channels, out, 3, padding=1, rng=rng, dtype=dtype)
        if batch_norm:
            layers[f"bn{suffix}"] = BatchNorm3d(out, dtype=dtype)
        layers[f"relu{suffix}"] = ReLU(inplace=True)
        channels = out
        if suffix in C3D_POOLS:
            name, kernel, padding = C3D_POOLS[suffix]
            if name == "pool5" and head == "gap":
                layers[name] = AdaptiveAvgPool3d(1)
            else:
                layers[name] = MaxPool3d(kernel, padding=padding)
    layers["flatten"] = Flatten()
    try:
        volume = Sequential(OrderedDict(layers.items())).output_shape(input_shape)
    except ValueError as exc:
        raise ValueError(f"input_shape {input_shape} is too small for C3D's poolings (use head='gap' or a larger "
                         f"clip): {exc}") from None
    hidden = scaled(4096)
    layers["fc6"] = Linear(volume[0], hidden, rng=rng, dtype=dtype)
    layers["relu6"] = ReLU(inplace=True)
    layers["drop6"] = Dropout(dropout, rng=rng)
    layers["fc7"] = Linear(hidden, hidden, rng=rng, dtype=dtype)
    layers["relu7"] = ReLU(inplace=True)
    layers["drop7"] = Dropout(dropout, rng=rng)
    layers["fc8"] = Linear(hidden, int(num_classes), rng=rng, dtype=dtype)
    net = Sequential(layers)
    net.conv1a.needs_input_grad = False
    net.input_shape = input_shape
    return net

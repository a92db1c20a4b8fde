"""The video CNN of the paper's Figure 1 (docs/method.md section 1)."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .nn import Conv3d, Dropout, Dropout3d, Flatten, Linear, MaxPool3d, ReLU, Sequential
from .nn import feature_volume  # noqa: F401  (its home is tuckerref.nn; importable here as before)
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


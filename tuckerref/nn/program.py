"""Compiled inference: a network's forward pass for one input shape, as a fixed list of prepared kernel calls.

``net(x)`` under ``no_grad`` walks the modules, checks every argument, packs the register tiles'
weights, allocates every output and sets thread counts, on every call. At batch 1 that Python
costs about half a millisecond per pass in either of the paper's networks: under 1 % of the
original network's pass and about 4 % of the compressed one's (``bench/orchestration.py``), so it
is the compressed network that it keeps from its FLOP-proportional time.

:func:`compile_inference` does all of that once for a given input shape and dtype. The pass is
split into the same steps and fusions as ``net(x)`` (:func:`tuckerref.nn.fusion.inference_groups`);
each step holds its prepared kernel call and its output buffer:

* a convolution with the max pooling (and ReLU) after it, or a whole Tucker-2 block, on the register
  tiles: :class:`~tuckerref.kernels.conv3d_tiles.PaddedTileConvolution` with kept buffers (padded
  input and output allocated once, tile weights packed once);
* any other convolution and linear layer: its kernel into a kept output buffer
  (:func:`~tuckerref.kernels.conv3d.conv3d_into`, :func:`~tuckerref.kernels.linear.linear_into`);
* a ReLU: in place in the buffer of the step before it; a batch normalisation with running
  statistics: its per-channel affine map y = s x + t, in place likewise; dropout and identity:
  nothing (the network runs as in eval mode); a flatten: a view;
* anything else: a copy of the module, run by its own forward pass.

The results are bit-identical to ``net(x)`` under ``no_grad`` in eval mode: the same kernels sum the
same terms in the same order. A program is a snapshot: the weights are copied when it is compiled,
so compile it again after training changes them. It reuses its buffers, so one program must not
run in two threads at once; each call returns a fresh copy of the (small) output.
"""
from __future__ import annotations

import copy

import numpy as np

from ..kernels.activation import relu as relu_kernel
from ..kernels.batchnorm import channel_affine_into
from ..kernels.conv3d import conv3d_into
from ..kernels.conv_pool import pooled_convolution, pooled_tiles_fit
from ..kernels.linear import linear_into
from ..kernels.tucker2 import block_geometry, fused_block
from ..kernels import simd
from .container import Sequential
from .fusion import Group, inference_groups, pooled_block, run_group
from .grad_mode import no_grad
from .layers import Conv3d, Dropout, Flatten, Identity, Linear, ReLU
from .module import Module
from .normalization import BatchNorm3d


def _array(param, dtype):
    """A copy of a parameter's array in ``dtype`` (None stays None)."""
    return None if param is None else np.array(param.data, dtype=dtype, copy=True)


class _Kept:
    """A step whose output is a buffer of the program's own (so a ReLU after it may work in place)."""

    owns_output = True


class _FusedStep(_Kept):
    """A convolution + pooling (+ ReLU) or a Tucker-2 block on the register tiles, prepared."""

    def __init__(self, prepared):
        self.prepared = prepared

    def __call__(self, x):
        return self.prepared(x)


class _ConvStep(_Kept):
    """One convolution (eq. 1) into a kept buffer, by the path :func:`~tuckerref.kernels.conv3d.conv3d` takes."""

    def __init__(self, conv: Conv3d, x_shape, dtype):
        self.weight, self.bias = _array(conv.weight, dtype), _array(conv.bias, dtype)
        self.stride, self.padding = conv.stride, conv.padding
        self.out = np.empty((x_shape[0],) + conv.output_shape(x_shape[1:]), dtype)

    def __call__(self, x):
        return conv3d_into(x, self.weight, self.bias, self.stride, self.padding, self.out)


class _LinearStep(_Kept):
    """One linear layer, y = x W^T + b, into a kept buffer."""

    def __init__(self, layer: Linear, x_shape, dtype):
        self.weight, self.bias = _array(layer.weight, dtype), _array(layer.bias, dtype)
        self.out = np.empty((x_shape[0], layer.out_features), dtype)

    def __call__(self, x):
        return linear_into(x, self.weight, self.bias, self.out)


class _ReLUStep:
    """max(x, 0), in place when the step before wrote x into a buffer of the program's own."""

    def __init__(self, in_place):
        self.in_place, self.owns_output = in_place, True

    def __call__(self, x):
        return relu_kernel(x, inplace=self.in_place)


class _AffineStep:
    """A batch normalisation on its running statistics, y = s_c x + t_c per channel, in place when the
    step before wrote x into a buffer of the program's own."""

    def __init__(self, bn: BatchNorm3d, in_place, dtype):
        scale, shift = bn.affine_map()
        self.scale, self.shift = scale.astype(dtype), shift.astype(dtype)
        self.in_place, self.owns_output = in_place, True

    def __call__(self, x):
        return channel_affine_into(x, self.scale, self.shift, x if self.in_place else np.empty_like(x))


class _ViewStep:
    """A flatten (a reshaped view) or an inactive dropout (the input itself)."""

    def __init__(self, flatten, owns_input):
        self.flatten, self.owns_output = flatten, owns_input

    def __call__(self, x):
        return x.reshape(x.shape[0], -1) if self.flatten else x


class _ModuleStep:
    """Any other group of layers, run by a private copy of them (a snapshot of their weights)."""

    owns_output = False

    def __init__(self, group: Group):
        modules = copy.deepcopy(group.modules)
        for m in modules:
            m.eval()
        block = None
        if group.block is not None:
            block = modules if group.kind == "block" else pooled_block(modules[0])
        self.group = Group(group.kind, modules, block)

    def __call__(self, x):
        return run_group(self.group, x)


def _fused_tucker2(block, x_shape, dtype, pool=None, relu=False):
    """The prepared fused Tucker-2 block (optionally pooled), or None when its tiles cannot mix (or it
    is a Tucker-1 block, ``block[0]`` None: those run streamed, by their own group)."""
    if block[0] is None:
        return None
    first, core, last = (_array(m.weight, dtype) for m in block)
    bias = _array(block[2].bias, dtype)
    g = block_geometry(tuple(x_shape), first.shape, core.shape, last.shape, None if bias is None else bias.shape,
                       block[1].stride, block[1].padding, pool, dtype, simd.VECTOR_REGISTERS)
    if not g.fused:
        return None
    return _FusedStep(fused_block(g, first, core, last, bias, relu, keep_buffers=True))


def _fused_pooled_conv(conv: Conv3d, x_shape, pool, relu, dtype):
    """The prepared convolution + pooling (+ ReLU), or None when the register tiles do not apply."""
    out_width = conv.output_shape(x_shape[1:])[3]
    if not pooled_tiles_fit(x_shape[1], conv.weight.shape, conv.stride, out_width, dtype):
        return None
    return _FusedStep(pooled_convolution(tuple(x_shape), _array(conv.weight, dtype), _array(conv.bias, dtype),
                                         conv.stride, conv.padding, pool, relu, keep_buffers=True))


def _steps(groups, x_shape, dtype, owns_input):
    """(steps, output shape) of ``groups`` for a batch of shape ``x_shape``."""
    steps = []
    for group in groups:
        step = None
        head = group.modules[0]
        if group.kind == "block":
            step = _fused_tucker2(group.block, x_shape, dtype)
            if step is None:
                inner, x_shape = _steps([Group("layer", (m,)) for m in group.block], x_shape, dtype, owns_input)
                steps += inner
                owns_input = inner[-1].owns_output
                continue
        elif group.kind == "pooled":
            pool, relu = group.modules[1].kernel_size, len(group.modules) == 3
            step = (_fused_pooled_conv(head, x_shape, pool, relu, dtype) if group.block is None else
                    _fused_tucker2(group.block, x_shape, dtype, pool, relu))
        elif type(head) is Sequential:
            inner, out_shape = _steps(inference_groups(head.children()), x_shape, dtype, owns_input)
            steps += inner
            x_shape, owns_input = out_shape, inner[-1].owns_output if inner else owns_input
            continue
        elif type(head) is Conv3d:
            step = _ConvStep(head, x_shape, dtype)
        elif type(head) is Linear:
            step = _LinearStep(head, x_shape, dtype)
        elif type(head) is ReLU:
            step = _ReLUStep(in_place=owns_input)
        elif type(head) is BatchNorm3d and head.running_mean is not None:
            step = _AffineStep(head, in_place=owns_input, dtype=dtype)
        elif type(head) in (Flatten, Identity) or isinstance(head, Dropout):
            step = _ViewStep(flatten=type(head) is Flatten, owns_input=owns_input)
        if step is None:
            step = _ModuleStep(group)
        steps.append(step)
        for m in group.modules:
            x_shape = (x_shape[0],) + tuple(m.output_shape(x_shape[1:]))
        owns_input = step.owns_output
    return steps, x_shape


class InferenceProgram:
    """``net``'s inference pass for batches of one shape, compiled by :func:`compile_inference`."""

    def __init__(self, net: Module, input_shape, dtype=np.float32):
        input_shape = tuple(int(n) for n in input_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"an inference program computes in float32 or float64, not {self.dtype}")
        if not input_shape or min(input_shape) < 1:
            raise ValueError(f"input shape must be a non-empty batch shape (N, ...), got {input_shape}")
        net.output_shape(input_shape[1:])  # raises, naming the layer, when the shapes do not chain
        groups = inference_groups(net.children()) if type(net) is Sequential else [Group("layer", (net,))]
        self.input_shape = input_shape
        self.steps, self.output_shape = _steps(groups, input_shape, self.dtype, owns_input=False)

    def __call__(self, x):
        """The network's output for the batch ``x`` (a new array), as ``net(x)`` under ``no_grad`` in eval mode."""
        x = np.asarray(x)
        if x.shape != self.input_shape or x.dtype != self.dtype:
            raise ValueError(f"this inference program was compiled for input shape {self.input_shape} "
                             f"{self.dtype}; got {x.shape} {x.dtype} (compile another for that input)")
        x = np.ascontiguousarray(x)
        with no_grad():  # for the steps that run modules
            for step in self.steps:
                x = step(x)
        return np.array(x, copy=True)

    def __len__(self):
        return len(self.steps)

    def describe(self) -> list:
        """The step kinds in order, e.g. ['fused', 'fused', 'conv', ...] (what was prepared, what runs generically)."""
        names = {_FusedStep: "fused", _ConvStep: "conv", _LinearStep: "linear", _ReLUStep: "relu", _AffineStep: "affine",
                 _ViewStep: "view", _ModuleStep: "module"}
        return [names[type(s)] for s in self.steps]


def compile_inference(net: Module, input_shape, dtype=np.float32) -> InferenceProgram:
    """Compile ``net``'s inference pass for batches of shape ``input_shape`` (N, C, D, H, W) and ``dtype``.

    The returned program computes what ``net(x)`` computes under ``no_grad`` in eval mode, bit for
    bit, with the checks, weight packing and allocations done here once (see the module docstring).
    The weights are copied: compile again after changing them.
    """
    return InferenceProgram(net, input_shape, dtype)


__all__ = ["InferenceProgram", "compile_inference"]

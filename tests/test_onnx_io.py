"""ONNX in and out (tuckerref.onnx_io): PyTorch's two exporters read back, tuckerref networks written for
onnxruntime, round trips, and the errors for what is outside the supported chain of operators.

onnxruntime and PyTorch are oracles only; their tests skip when the wheels are missing.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tuckerref import nn  # noqa: E402
from tuckerref.compress import compress_network, tucker2_conv  # noqa: E402
from tuckerref.io import load_model  # noqa: E402
from tuckerref.onnx_io.reader import import_onnx, network_from_model, read_onnx  # noqa: E402
from tuckerref.onnx_io.writer import export_onnx, to_onnx  # noqa: E402

RTOL = 1e-4
INPUT = (3, 4, 12, 12)     # (C, D, H, W) of the small video networks below
BATCH = 2


def _run_net(net, x):
    with nn.no_grad():
        return net.eval()(x)


def _ort_logits(path_or_model, x):
    ort = pytest.importorskip("onnxruntime")
    source = path_or_model if isinstance(path_or_model, (str, Path)) else path_or_model.SerializeToString()
    runner = ort.InferenceSession(str(source) if isinstance(source, Path) else source,
                                  providers=["CPUExecutionProvider"])
    return runner.run(None, {runner.get_inputs()[0].name: x})[0]


def _assert_relative(got, want, rtol=RTOL):
    """max |got - want| <= rtol * max |want| (logits compared as one vector, as the acceptance states)."""
    assert got.shape == want.shape
    err = np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def _clip(seed=0, batch=BATCH, shape=INPUT):
    return np.random.default_rng(seed).standard_normal((batch,) + shape).astype(np.float32)


# -- PyTorch's exporters ----------------------------------------------------------------------------------------
def _torch_c3d(torch, head):
    """A narrow C3D-like network (Tran et al. 2015 layout): conv + BatchNorm + ReLU blocks, max and average
    pooling, then AdaptiveAvgPool3d(1) + Flatten (head "gap") or Flatten of the pooled volume (head "fc"),
    two linear layers with Dropout; BatchNorm statistics set away from their defaults."""
    tnn = torch.nn
    torch.manual_seed(0)
    layers = [tnn.Conv3d(3, 4, 3, padding=1), tnn.BatchNorm3d(4), tnn.ReLU(), tnn.MaxPool3d((1, 2, 2)),
              tnn.Conv3d(4, 6, 3, padding=1), tnn.BatchNorm3d(6), tnn.ReLU(), tnn.MaxPool3d(2),
              tnn.Conv3d(6, 8, 3, padding=1), tnn.BatchNorm3d(8), tnn.ReLU(),
              tnn.AvgPool3d(2, padding=(0, 1, 1))]
    features = 8 if head == "gap" else 8 * 1 * 2 * 2
    layers += [tnn.AdaptiveAvgPool3d(1)] if head == "gap" else []
    model = tnn.Sequential(OrderedDict([("features", tnn.Sequential(*layers)), ("classifier", tnn.Sequential(
        tnn.Flatten(), tnn.Linear(features, 16), tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(16, 5)))]))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


EXPORTS = {
    "torchscript-folded": dict(dynamo=False),
    "torchscript-batchnorm": dict(dynamo=False, do_constant_folding=False, training="PRESERVE"),
    "dynamo-symbolic-batch": dict(dynamo=True, dynamic_batch=True),
}


def _torch_export(torch, model, x, path, **options):
    """torch.onnx.export of ``model`` on clip ``x``, its deprecation and tracing warnings silenced."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), str(path), verbose=False, **options)


@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory):
    """{(exporter, head): (path, input clip)}, each model exported once per module (exports are slow)."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch_onnx")
    cache = {}

    def get(exporter, head):
        if (exporter, head) not in cache:
            options = dict(EXPORTS[exporter])
            if options["dynamo"]:
                pytest.importorskip("onnxscript")
            model = _torch_c3d(torch, head)
            x = _clip(1)
            kwargs = {}
            if options.pop("dynamic_batch", False):
                kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
            if options.get("training") == "PRESERVE":
                options["training"] = torch.onnx.TrainingMode.PRESERVE
            path = folder / f"{exporter}-{head}.onnx"
            _torch_export(torch, model, x, path, **options, **kwargs)
            cache[exporter, head] = path, x
        return cache[exporter, head]

    return get


#: A TorchScript export takes well under a second, a dynamo export ten or more: dynamo runs once, with a
#: symbolic batch size and the global-pooling head (ReduceMean, then a Reshape to (-1, features)).
CASES = [("torchscript-folded", "gap"), ("torchscript-folded", "fc"), ("torchscript-batchnorm", "gap"),
         ("torchscript-batchnorm", "fc"), ("dynamo-symbolic-batch", "gap")]


@pytest.mark.parametrize("exporter, head", CASES)
def test_torch_export_imports_to_onnxruntime_logits(torch_exports, exporter, head):
    path, x = torch_exports(exporter, head)
    net = read_onnx(path)
    want = _ort_logits(path, x)
    _assert_relative(_run_net(net, x), want)
    kinds = [type(m).__name__ for m in net.children()]
    assert kinds.count("Conv3d") == 3 and kinds.count("Linear") == 2
    if exporter == "torchscript-batchnorm":
        assert kinds.count("BatchNorm3d") == 3   # kept as layers, with running statistics
    assert net.input_shape == INPUT


def test_imported_network_names_are_conv_bn_fc_when_initializers_are_nested(torch_exports):
    path, _ = torch_exports("torchscript-batchnorm", "gap")
    assert read_onnx(path).names() == ["conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "conv3",
                                       "bn3", "relu3", "avgpool1", "gap1", "flatten1", "fc1", "relu4", "fc2"]


def test_torchscript_view_with_dynamic_batch_reads_its_shape_computation(tmp_path):
    """``h.view(h.size(0), -1)`` in a module's forward, exported with a dynamic batch axis, is a Reshape whose
    shape comes from Shape, Gather, Unsqueeze and Concat nodes; top-level attribute names are kept."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.pool, self.fc6 = tnn.Conv3d(3, 4, 3, padding=1), tnn.MaxPool3d(2), tnn.Linear(64, 3)

        def forward(self, x):
            h = self.pool(torch.relu(self.conv1(x)))
            return self.fc6(h.view(h.size(0), -1))

    torch.manual_seed(1)
    x = _clip(9, batch=3, shape=(3, 2, 8, 8))
    path = tmp_path / "view.onnx"
    _torch_export(torch, Net().eval(), x, path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert "Shape" in [n.op_type for n in onnx.load(str(path)).graph.node]
    net = read_onnx(path)
    assert net.names() == ["conv1", "relu1", "pool1", "flatten1", "fc6"]
    _assert_relative(_run_net(net, x), _ort_logits(path, x))


def test_imported_torch_network_compressed_and_exported_matches_onnxruntime_and_c(torch_exports, tmp_path):
    """The user's path: PyTorch -> ONNX -> import -> fold BatchNorm -> compress -> export ONNX and C;
    onnxruntime and the compiled C run the compressed model with the engine's compressed logits."""
    from tuckerref.fold import fold_batchnorm
    path, x = torch_exports("torchscript-batchnorm", "fc")
    net = fold_batchnorm(read_onnx(path))
    # Algorithm 1 (the default plan for a network other than the paper's): Tucker-1 conv1 (two Conv nodes),
    # Tucker-2 conv2, conv3 and fc1 as a convolution (three each)
    compressed = compress_network(net, ranks={"conv1": 2, "conv2": [3, 4], "conv3": [4, 5], "fc1": [6, 8], "fc2": 3})
    model = export_onnx(compressed, tmp_path / "compressed.onnx", batch_size=BATCH)
    assert [n.op_type for n in model.graph.node].count("Conv") == 2 + 3 * 3
    want = _run_net(compressed, x)
    _assert_relative(_ort_logits(tmp_path / "compressed.onnx", x), want)
    # ... and the same compressed network exported as C gives the same logits
    import shutil

    from tuckerref.export import compile_c, export_c, run_c
    if shutil.which("cc") or shutil.which("gcc"):
        export_c(compressed, tmp_path / "c", input_shape=x.shape[1:])
        _assert_relative(run_c(compile_c(tmp_path / "c"), x)[0], want)


def test_external_data_is_read_from_the_model_folder(tmp_path, monkeypatch):
    net = _tuckerref_net(batch_norm=False)
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(to_onnx(net), str(folder / "net.onnx"), save_as_external_data=True, location="net.weights",
                    size_threshold=0)
    monkeypatch.chdir(tmp_path)                            # not the model's folder
    back = read_onnx(folder / "net.onnx")
    for (name, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        np.testing.assert_array_equal(b, a, err_msg=name)
    (folder / "net.weights").unlink()
    _expect_error(tmp_path, folder / "net.onnx", "net.onnx")


# -- tuckerref networks to onnxruntime ----------------------------------------------------------------------------
def _tuckerref_net(batch_norm=True, seed=0):
    """A small chain with every exported layer kind (BatchNorm, average pooling and global pooling when
    ``batch_norm``)."""
    rng = np.random.default_rng(seed)
    layers = OrderedDict()
    layers["conv1"] = nn.Conv3d(3, 4, 3, padding=1, rng=rng)
    if batch_norm:
        layers["bn1"] = _batchnorm(4, rng)
    layers["relu1"] = nn.ReLU()
    layers["pool1"] = nn.MaxPool3d((1, 2, 2))
    layers["conv2"] = nn.Conv3d(4, 6, (3, 3, 3), stride=(1, 2, 2), padding=1, rng=rng)
    if batch_norm:
        layers["bn2"] = _batchnorm(6, rng)
        layers["relu2"] = nn.ReLU()
        layers["avgpool"] = nn.AvgPool3d(2, padding=(0, 1, 1), count_include_pad=False)
        layers["gap"] = nn.AdaptiveAvgPool3d(1)
        features = 6
    else:
        layers["relu2"] = nn.ReLU()
        layers["pool2"] = nn.MaxPool3d(2)
        features = 6 * 2 * 1 * 1
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(features, 10, rng=rng)
    layers["relu3"] = nn.ReLU()
    layers["drop"] = nn.Dropout(0.5)
    layers["fc2"] = nn.Linear(10, 5, rng=rng)
    net = nn.Sequential(layers)
    net.input_shape = INPUT
    return net.eval()


def _batchnorm(channels, rng):
    bn = nn.BatchNorm3d(channels)
    bn.load_state_dict(OrderedDict([
        ("weight", rng.uniform(0.5, 1.5, channels)), ("bias", rng.uniform(-0.5, 0.5, channels)),
        ("running_mean", rng.uniform(-0.5, 0.5, channels)), ("running_var", rng.uniform(0.5, 2.0, channels)),
        ("num_batches_tracked", np.array(3, dtype=np.int64))]))
    return bn


def _compressed(net):
    """``net`` with conv2 replaced by its Tucker-2 block (three Conv3d, eqs. 8-10)."""
    layers = OrderedDict(net.named_children())
    layers["conv2"] = tucker2_conv(net.conv2, (2, 3))
    out = nn.Sequential(layers)
    out.input_shape = net.input_shape
    return out.eval()


@pytest.mark.parametrize("variant", ["plain", "batchnorm", "batchnorm-folded", "compressed", "compressed-network"])
def test_exported_network_runs_in_onnxruntime_with_tuckerref_logits(variant, tmp_path):
    if variant == "batchnorm-folded":
        pytest.importorskip("tuckerref.fold")
    net = _tuckerref_net(batch_norm=variant.startswith("batchnorm") or variant == "compressed")
    if variant == "compressed":
        net = _compressed(net)
    if variant == "compressed-network":
        # Algorithm 1: Tucker-1 conv1 (two Conv nodes), Tucker-2 conv2 and fc1 (three each), Tucker-1 fc2 (two Gemm)
        net = compress_network(_tuckerref_net(batch_norm=False), plan="algorithm1",
                               ranks={"conv1": 2, "conv2": [3, 4], "fc1": [4, 5], "fc2": 3}).eval()
    x = _clip(2)
    path = tmp_path / "net.onnx"
    model = export_onnx(net, path, batch_size=BATCH, fold_batchnorm=variant == "batchnorm-folded")
    ops = [n.op_type for n in model.graph.node]
    assert "Dropout" not in ops
    if variant == "batchnorm":
        assert ops.count("BatchNormalization") == 2 and "GlobalAveragePool" in ops and "AveragePool" in ops
    if variant == "batchnorm-folded":
        assert "BatchNormalization" not in ops
    if variant == "compressed":
        assert ops.count("Conv") == 4
    if variant == "compressed-network":
        assert ops.count("Conv") == 2 + 3 + 3 and ops.count("Gemm") == 2
    _assert_relative(_ort_logits(path, x), _run_net(net, x))


def test_c3d_with_batchnorm_exports_for_onnxruntime_and_reads_back_by_name(tmp_path):
    from tuckerref.models import c3d
    net = c3d(input_shape=(3, 16, 16, 16), num_classes=5, width=1 / 32, batch_norm=True, seed=0)
    rng = np.random.default_rng(7)
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm3d):
            child.load_state_dict(_batchnorm(child.num_features, rng).state_dict())
    net.eval()
    x = _clip(8, batch=1, shape=(3, 16, 16, 16))
    export_onnx(net, tmp_path / "c3d.onnx")
    _assert_relative(_ort_logits(tmp_path / "c3d.onnx", x), _run_net(net, x))
    back = read_onnx(tmp_path / "c3d.onnx")
    assert back.names() == [n for n in net.names() if not n.startswith("drop")]
    for (name, a), (other, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert name == other
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(b, a, err_msg=name)


def test_symbolic_batch_export_runs_any_batch_size():
    net = _tuckerref_net(batch_norm=False)
    model = to_onnx(net, dynamic_batch=True, opset=18)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x = _clip(3, batch=3)
    _assert_relative(_ort_logits(model, x), _run_net(net, x))
    assert network_from_model(model).names() == [n for n in net.names() if n != "drop"]   # Dropout left out


# -- round trip --------------------------------------------------------------------------------------------------
@st.composite
def chains(draw):
    """A random chain of the exportable layers on a small random input, with random parameter values."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    shape = (draw(st.integers(1, 3)),) + tuple(draw(st.integers(3, 6)) for _ in range(3))
    layers, current = [], shape
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "relu", "max", "avg", "compressed"]))
        k = tuple(draw(st.integers(1, min(3, d))) for d in current[1:])
        pad = tuple(draw(st.integers(0, kk // 2)) for kk in k)
        stride = tuple(draw(st.integers(1, 2)) for _ in range(3))
        if kind in ("conv", "compressed"):
            conv = nn.Conv3d(current[0], draw(st.integers(1, 4)), k, stride=stride, padding=pad,
                             bias=draw(st.booleans()), rng=rng)
            layer = tucker2_conv(conv, (1, 1)) if kind == "compressed" else conv
        elif kind == "bn":
            layer = _batchnorm(current[0], rng)
        elif kind == "relu":
            layer = nn.ReLU()
        elif kind == "max":
            layer = nn.MaxPool3d(k, stride=stride, padding=pad)
        else:
            layer = nn.AvgPool3d(k, stride=stride, padding=pad, count_include_pad=draw(st.booleans()))
        try:
            nxt = layer.output_shape(current)
        except ValueError:
            continue
        layers.append(layer)
        current = nxt
    if draw(st.booleans()):
        layers.append(nn.AdaptiveAvgPool3d(1))
        current = (current[0], 1, 1, 1)
    layers.append(nn.Flatten())
    features = int(np.prod(current))
    for _ in range(draw(st.integers(0, 2))):
        out = draw(st.integers(1, 5))
        layers += [nn.Linear(features, out, bias=draw(st.booleans()), rng=rng)]
        layers += draw(st.sampled_from([[], [nn.ReLU()], [nn.Dropout(0.25)], [nn.ReLU(), nn.Dropout(0.5)]]))
        features = out
    net = nn.Sequential(*layers)
    net.input_shape = shape
    return net.eval()


def _anonymous(spec):
    """The spec with child names and ReLU's inplace flag removed (import names children itself)."""
    out = {"type": spec["type"], "config": dict(spec["config"])}
    if spec["type"] == "ReLU":
        out["config"].pop("inplace", None)
    if "children" in spec:
        out["children"] = [_anonymous(child) for _, child in spec["children"]]
    return out


@settings(max_examples=25)
@given(net=chains())
def test_chain_round_trips_through_onnx_unchanged(net):
    back = network_from_model(to_onnx(net, keep_dropout=True))
    assert _anonymous(back.spec()) == _anonymous(net.spec())
    assert back.input_shape == net.input_shape
    want, got = list(net.state_dict().values()), list(back.state_dict().values())
    assert len(want) == len(got)
    for a, b in zip(want, got):
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(b, a)


def test_compressed_network_round_trips_with_its_names(tmp_path):
    net = compress_network(_tuckerref_net(batch_norm=False), ranks={"conv1": 2, "conv2": [3, 4], "fc2": 3,
                                                                   "fc1": [4, 5]}).eval()
    export_onnx(net, tmp_path / "c.onnx", keep_dropout=True)
    back = import_onnx(tmp_path / "c.onnx", tmp_path / "c.h5")
    assert _anonymous(back.spec()) == _anonymous(net.spec()) and back.names() == net.names()
    assert list(back.state_dict()) == list(net.state_dict())   # conv1.0.weight, ... kept as nested Sequentials
    loaded, meta = load_model(tmp_path / "c.h5")
    assert loaded.names() == net.names() and meta["onnx_producer"].startswith("tuckerref")
    assert tuple(meta["input_shape"]) == INPUT


# -- graphs written by hand: MatMul + Add, Transpose, shape computations, symbolic batch ---------------------
def _model(nodes, inits, in_dims, out_dims, opset=17, producer="hand"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out_dims)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, producer_name=producer,
                             ir_version=helper.find_min_ir_version_for(opsets))


def _conv_inits(rng, name="conv.weight"):
    return {name: rng.standard_normal((2, 1, 3, 3, 3)).astype(np.float32)}


@pytest.mark.parametrize("weights", ["transposed-initializer", "transpose-node"])
@pytest.mark.parametrize("batch", [2, "N"])
def test_matmul_add_with_shape_computed_reshape_is_a_linear_layer(weights, batch):
    """Conv -> Reshape(x, Concat(Gather(Shape(x), 0), [-1])) -> MatMul(W^T) + b, the form the dynamo exporter
    writes for a linear layer on a computed shape (a Constant node, Shape, Gather, Unsqueeze, Concat)."""
    rng = np.random.default_rng(0)
    inits = _conv_inits(rng)
    w = rng.standard_normal((3, 2 * 2 * 2 * 2)).astype(np.float32)
    inits["fc.bias"] = rng.standard_normal(3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], pads=[0] * 6),
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Constant", [], ["minus1"], value_ints=[-1]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["c", "shape"], ["flat"])]
    inits["axes"] = np.array([0], np.int64)
    if weights == "transpose-node":
        inits["fc.weight"] = w
        nodes.append(helper.make_node("Transpose", ["fc.weight"], ["wt"], perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", ["flat", "wt"], ["mm"]))
    else:
        inits["wt"] = np.ascontiguousarray(w.T)
        nodes.append(helper.make_node("MatMul", ["flat", "wt"], ["mm"]))
    nodes.append(helper.make_node("Add", ["fc.bias", "mm"], ["y"]))
    model = _model(nodes, inits, [batch, 1, 4, 4, 4], [batch, 3])
    net = network_from_model(model)
    assert [type(m).__name__ for m in net.children()] == ["Conv3d", "Flatten", "Linear"]
    assert net.names()[0] == "conv" and (net.names()[2] == "fc") == (weights == "transpose-node")
    x = _clip(4, batch=2, shape=(1, 4, 4, 4))
    _assert_relative(_run_net(net, x), _ort_logits(model, x))


# -- errors ------------------------------------------------------------------------------------------------------
def _saved(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save_model(model, str(path))
    return path


def _expect_error(tmp_path, model_or_path, *fragments):
    path = model_or_path if isinstance(model_or_path, Path) else _saved(tmp_path, model_or_path)
    out = tmp_path / "out.h5"
    with pytest.raises(ValueError) as info:
        import_onnx(path, out)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()
    return message


def _small_chain(extra_nodes=(), extra_inits=None, in_dims=(1, 1, 4, 4, 4), out_dims=None, out=None):
    rng = np.random.default_rng(1)
    inits = _conv_inits(rng)
    inits.update(extra_inits or {})
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv_node"),
             helper.make_node("Relu", ["c"], ["r"], name="relu_node")] + list(extra_nodes)
    return _model(nodes, inits, list(in_dims), out_dims or [1, 2, 2, 2, 2])


def test_truncated_and_foreign_files_are_refused_naming_the_file(tmp_path):
    good = _saved(tmp_path, to_onnx(_tuckerref_net(batch_norm=False)), "good.onnx")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    _expect_error(tmp_path, truncated)
    foreign = tmp_path / "foreign.onnx"
    foreign.write_text("this is a text file, not a protobuf\n" * 20)
    _expect_error(tmp_path, foreign)
    _expect_error(tmp_path, tmp_path / "missing.onnx", "does not exist")


def test_residual_add_is_not_a_chain(tmp_path):
    model = _small_chain([helper.make_node("Conv", ["r", "w2"], ["c2"], name="conv2_node", pads=[1] * 6),
                          helper.make_node("Add", ["c2", "r"], ["y"], name="residual_add")],
                         {"w2": np.zeros((2, 2, 3, 3, 3), np.float32)})
    _expect_error(tmp_path, model, "'residual_add'", "(Add)", "not a chain")


def test_branch_reading_an_earlier_tensor_is_not_a_chain(tmp_path):
    model = _small_chain([helper.make_node("Relu", ["c"], ["y"], name="second_reader")])
    _expect_error(tmp_path, model, "'second_reader'", "(Relu)", "earlier tensor")


def test_unsupported_operator_is_named(tmp_path):
    model = _small_chain([helper.make_node("Sigmoid", ["r"], ["y"], name="gate")])
    _expect_error(tmp_path, model, "'gate'", "(Sigmoid)", "not supported")


def test_dynamic_input_shape_is_refused(tmp_path):
    model = _small_chain(in_dims=("N", 1, 4, "height", 4), out_dims=["N", 2, 2, "h", 2])
    _expect_error(tmp_path, model, "dynamic shape", "'height'")


def test_two_dimensional_conv_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv2d")],
                   {"w": rng.standard_normal((2, 1, 3, 3)).astype(np.float32)}, [1, 1, 5, 5], [1, 2, 3, 3])
    _expect_error(tmp_path, model, "'conv2d'", "(Conv)", "2-D convolution")


@pytest.mark.parametrize("attrs, why", [
    (dict(group=2), "group 2"), (dict(dilations=[1, 2, 1]), "dilation"),
    (dict(pads=[1, 1, 1, 0, 0, 0]), "asymmetric")])
def test_conv_attributes_outside_the_engine_are_named(tmp_path, attrs, why):
    rng = np.random.default_rng(3)
    channels = 2 if "group" in attrs else 1
    w = rng.standard_normal((2, 1, 3, 3, 3)).astype(np.float32)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="odd_conv", **attrs)], {"w": w},
                   [1, channels, 6, 6, 6], [1, 2, None, None, None])
    _expect_error(tmp_path, model, "'odd_conv'", "(Conv)", why)


@pytest.mark.parametrize("node, in_dims, why", [
    (helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2, 2], strides=[2, 2, 2],
                      ceil_mode=1), [1, 1, 5, 4, 4],
     "ceil_mode 1"),
    (helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2]), [1, 1, 4, 4], "2-D MaxPool"),
    (helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2, 2, 2], auto_pad="SAME_UPPER"),
     [1, 1, 5, 4, 4], "asymmetric"),
    (helper.make_node("ReduceMean", ["x"], ["y"], name="p", axes=[1, 2, 3, 4]), [1, 1, 4, 4, 4], "axes"),
    (helper.make_node("Flatten", ["x"], ["y"], name="p", axis=2), [1, 1, 4, 4, 4], "axis 2"),
    (helper.make_node("BatchNormalization", ["x", "s", "s", "s", "s"], ["y"], name="p", training_mode=1),
     [1, 1, 4, 4, 4], "training_mode 1")])
def test_pooling_and_shape_nodes_outside_the_engine_are_named(tmp_path, node, in_dims, why):
    inits = {"s": np.ones(1, np.float32)} if node.op_type == "BatchNormalization" else {}
    opset = 13 if node.op_type == "ReduceMean" else 17      # axes an attribute before opset 18
    model = _model([node], inits, in_dims, [None] * len(in_dims), opset=opset)
    _expect_error(tmp_path, model, "'p'", f"({node.op_type})", why)


def test_export_errors_name_the_layer(tmp_path):
    bn = nn.BatchNorm3d(2, track_running_stats=False)
    net = nn.Sequential(OrderedDict([("conv", nn.Conv3d(1, 2, 1, rng=0)), ("bn", bn), ("flatten", nn.Flatten())]))
    with pytest.raises(ValueError, match="'bn'.*running"):
        export_onnx(net, tmp_path / "bn.onnx", input_shape=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="input shape"):
        to_onnx(net)
    assert not (tmp_path / "bn.onnx").exists()


def test_export_refuses_adaptive_pooling_with_uneven_windows():
    net = nn.Sequential(OrderedDict([("conv", nn.Conv3d(1, 2, 1, rng=0)), ("ada", nn.AdaptiveAvgPool3d((2, 2, 2))),
                                     ("flatten", nn.Flatten())]))
    with pytest.raises(ValueError, match="'ada'"):
        to_onnx(net, input_shape=(1, 3, 4, 5))
    model = to_onnx(net, input_shape=(1, 4, 4, 6))        # divisible: an AveragePool
    assert [n.op_type for n in model.graph.node] == ["Conv", "AveragePool", "Flatten"]
    x = _clip(5, batch=1, shape=(1, 4, 4, 6))
    _assert_relative(_ort_logits(model, x), _run_net(net, x))


# -- commands ----------------------------------------------------------------------------------------------------
def test_import_and_export_commands(tmp_path, capsys):
    from tuckerref.cli import main
    from tuckerref.io import save_model
    net = _tuckerref_net(batch_norm=True)
    save_model(tmp_path / "w.h5", net)
    assert main(["export-onnx", str(tmp_path / "w.h5"), str(tmp_path / "w.onnx"), "--batch", "2"]) == 0
    assert main(["import-onnx", str(tmp_path / "w.onnx"), str(tmp_path / "back.h5")]) == 0
    back, _ = load_model(tmp_path / "back.h5")
    x = _clip(6)
    _assert_relative(_run_net(back, x), _run_net(net, x), rtol=1e-6)
    assert main(["import-onnx", str(tmp_path / "w.onnx"), str(tmp_path / "w.onnx")]) == 2
    assert main(["export-onnx", str(tmp_path / "w.h5"), str(tmp_path / "w.h5")]) == 2
    assert main(["import-onnx", str(tmp_path / "w.h5"), str(tmp_path / "x.h5")]) == 2
    assert "w.h5" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()

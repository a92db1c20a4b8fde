"""Mini-batch training, evaluation, data splits and bit-exact resumable checkpoints.

The loop is the paper's (Section 4; docs/method.md section 10): softmax output with mean cross-entropy
(:func:`tuckerref.kernels.softmax_cross_entropy`), gradients from ``net.backward``, SGD with
lr 0.001, momentum 0.7, weight decay 0.01 and mini-batches of 20 by default, a 90/10 train/test
split and 5-fold cross-validation. Typical use::

    from tuckerref.data.store import ClipDataset
    from tuckerref.models import thetis_net
    from tuckerref.train import Subset, fit, train_test_split, evaluate

    ds = ClipDataset("clips.h5")
    tr, te = train_test_split(len(ds), 0.1, seed=0, stratify=ds.labels)
    net = thetis_net(ds.clip_shape, seed=0)
    history = fit(net, Subset(ds, tr), Subset(ds, te), epochs=30, seed=0, checkpoint_dir="ckpt")
    print(evaluate(net, Subset(ds, te))["accuracy"])

A data set is anything with ``len(ds)``, ``ds.labels`` (int64 array) and ``ds.batch(indices) ->
(x float32 (B, C, F, H, W) in [0, 1], y int64)``: :class:`tuckerref.data.store.ClipDataset`,
:class:`ArrayDataset` (in memory) and :class:`Subset` (a view by indices).

Random streams are derived from one integer ``seed`` with :class:`numpy.random.SeedSequence`
spawn keys, so that the split, the shuffling and the dropout masks never share a stream with each
other or with ``thetis_net(seed=seed)``'s initialisation (``default_rng(seed)``).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from .allocation import keep_freed_memory
from .data.store import ClipDataset
from .io import atomic_path, load_weights, open_h5, save_model
from .kernels import softmax_cross_entropy
from .nn import no_grad
from .optim import OPTIMIZERS, make_optimizer

CHECKPOINT_NAME = "checkpoint.h5"
_SPLIT_STREAM, _SHUFFLE_STREAM, _DROPOUT_STREAM = 1, 2, 3


def stream(seed, purpose, *more):
    """The Generator for one purpose of a run: ``default_rng(SeedSequence(seed, spawn_key=(purpose, *more)))``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed), spawn_key=(purpose,) + more)))


# -- data sets --------------------------------------------------------------------------------------
class ArrayDataset:
    """An in-memory data set: clips (N, C, F, H, W) uint8 (scaled by 1/255) or float in [0, 1], labels (N,)."""

    def __init__(self, clips, labels):
        x = np.asarray(clips)
        y = np.asarray(labels)
        if x.ndim != 5:
            raise ValueError(f"clips must be shaped (N, C, F, H, W), got {x.shape}")
        if y.shape != (x.shape[0],) or (y.size and y.dtype.kind not in "iu"):
            raise ValueError(f"labels must be {x.shape[0]} integers, got shape {y.shape} dtype {y.dtype}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"clips contain {int(np.size(x) - np.isfinite(x).sum())} non-finite values")
        if x.dtype.kind not in "uf":
            raise ValueError(f"clips must be uint8 or floating point, got {x.dtype}")
        self.clips = x
        self.labels = y.astype(np.int64)
        self.clip_shape = tuple(x.shape[1:])
        self.dtype = x.dtype

    def __len__(self):
        return int(self.labels.shape[0])

    def batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        x = self.clips[idx]
        x = np.divide(x, np.float32(255.0), dtype=np.float32) if x.dtype == np.uint8 else x.astype(np.float32)
        return x, self.labels[idx]


class Subset:
    """The items ``indices`` of ``dataset`` (a split or a fold), with the same protocol."""

    def __init__(self, dataset, indices):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
            raise ValueError(f"subset indices must lie in [0, {len(dataset)}), got [{idx.min()}, {idx.max()}]")
        self.dataset, self.indices = dataset, idx
        self.labels = np.asarray(dataset.labels, dtype=np.int64)[idx]

    def __len__(self):
        return int(self.indices.size)

    def __getattr__(self, name):  # properties shared by every item: those of the parent
        if name in ("clip_shape", "dtype", "class_names", "channel_order"):
            return getattr(self.dataset, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def batch(self, indices):
        return self.dataset.batch(self.indices[np.asarray(indices, dtype=np.int64)])


def clip_shape_of(dataset):
    """Per-clip shape (C, F, H, W) of a data set (its ``clip_shape``, else the shape of its first clip)."""
    shape = getattr(dataset, "clip_shape", None)
    if shape is None:
        shape = dataset.batch(np.array([0]))[0].shape[1:]
    return tuple(int(s) for s in shape)


def _stores_integers(dataset):
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    return isinstance(base, ClipDataset) or np.issubdtype(getattr(base, "dtype", np.float32), np.integer)


def validate_data(net, dataset, what="data set", batch_size=20):
    """Check once, before training, that ``dataset`` fits ``net``; raise ``ValueError`` naming the fault.

    Checks: at least one clip; clip shape == ``net.input_shape`` (when the network records one);
    labels in [0, number of network outputs); and, unless the data are stored as integers, that
    every value is finite and within [0, 1].
    """
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{what} is empty")
    shape = clip_shape_of(dataset)
    expected = getattr(net, "input_shape", None)
    if expected is not None and tuple(expected) != shape:
        raise ValueError(f"{what} has clips of shape {shape}, the network expects {tuple(expected)}")
    classes = net.output_shape(shape)[0]
    labels = np.asarray(dataset.labels)
    if labels.shape != (n,):
        raise ValueError(f"{what} has {n} clips but labels of shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{what} has labels in [{labels.min()}, {labels.max()}], the network has {classes} outputs")
    if not _stores_integers(dataset):
        for start in range(0, n, batch_size):
            x, _ = dataset.batch(np.arange(start, min(n, start + batch_size)))
            if not np.isfinite(x).all():
                raise ValueError(f"{what} has non-finite values in clips {start}..{min(n, start + batch_size) - 1}")
            if x.min() < 0 or x.max() > 1:
                raise ValueError(f"{what} has values in [{x.min()}, {x.max()}] in clips {start}.."
                                 f"{min(n, start + batch_size) - 1}; clips must be scaled to [0, 1]")
    return shape


# -- splits -----------------------------------------------------------------------------------------
def _groups(n, stratify):
    if stratify is None:
        return [np.arange(n)]
    labels = np.asarray(stratify)
    if labels.shape != (n,):
        raise ValueError(f"stratify labels must have shape ({n},), got {labels.shape}")
    return [np.flatnonzero(labels == c) for c in np.unique(labels)]


def train_test_split(n, test_fraction=0.1, seed=0, stratify=None):
    """Sorted ``(train_indices, test_indices)`` of ``range(n)``; ``round(test_fraction * n_c)`` test items per class.

    With ``stratify`` (the labels) each class is split separately, and a class of two or more
    items keeps at least one item in each part; deterministic in ``seed``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    rng = stream(seed, _SPLIT_STREAM)
    test = []
    for members in _groups(int(n), stratify):
        k = int(round(test_fraction * members.size))
        if test_fraction > 0 and members.size >= 2:
            k = min(max(k, 1), members.size - 1)
        test.append(rng.permutation(members)[:k])
    test = np.sort(np.concatenate(test)).astype(np.int64)
    return np.setdiff1d(np.arange(n, dtype=np.int64), test), test


def kfold(n, k=5, seed=0, stratify=None):
    """``k`` pairs ``(train_indices, test_indices)``: the test folds are disjoint and cover ``range(n)``.

    Items are shuffled (per class with ``stratify``) and dealt to the folds in turn, continuing
    across classes, so fold sizes differ by at most one and each class is spread evenly.
    """
    if not 2 <= k <= n:
        raise ValueError(f"kfold needs 2 <= k <= n, got k={k} for n={n}")
    rng = stream(seed, _SPLIT_STREAM, k)
    order = np.concatenate([rng.permutation(m) for m in _groups(int(n), stratify)])
    fold_of = np.empty(n, dtype=np.int64)
    fold_of[order] = np.arange(n) % k
    all_idx = np.arange(n, dtype=np.int64)
    return [(all_idx[fold_of != f], all_idx[fold_of == f]) for f in range(k)]


def split_fingerprint(dataset, test_indices):
    """A short hash naming the test clips (their names when the data set has names, else their indices)."""
    names = getattr(dataset, "names", None)
    items = [names[i] for i in test_indices] if names is not None else [int(i) for i in test_indices]
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:16]


# -- metrics ----------------------------------------------------------------------------------------
def confusion_matrix(labels, predictions, num_classes):
    """C[i, j] = number of items of true class i predicted as class j."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return cm


def accuracy(labels, predictions):
    """Fraction of items whose prediction equals the label (NaN for no items)."""
    labels = np.asarray(labels)
    return float(np.mean(labels == np.asarray(predictions))) if labels.size else float("nan")


def evaluate(net, dataset, batch_size=20):
    """Mean cross-entropy, accuracy, confusion matrix and predictions of ``net`` (in eval mode) on ``dataset``.

    Returns ``{"n", "loss", "accuracy", "confusion" (K, K), "predictions" (N,)}``; the network's
    train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset)
    was_training = net.training
    net.eval()
    total, preds, classes = 0.0, np.empty(n, dtype=np.int64), None
    try:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(n, start + batch_size))
            x, y = dataset.batch(idx)
            with no_grad():
                logits = net.forward(x)
            loss, _ = softmax_cross_entropy(logits, y)
            total += loss * idx.size
            preds[idx] = np.argmax(logits, axis=1)
            classes = logits.shape[1]
    finally:
        net.train(was_training)
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if classes is None:
        classes = net.output_shape(clip_shape_of(dataset))[0] if n else 0
    return {"n": n, "loss": total / n if n else float("nan"), "accuracy": accuracy(labels, preds),
            "confusion": confusion_matrix(labels, preds, classes), "predictions": preds}


# -- random state of dropout layers -----------------------------------------------------------------
def dropout_layers(net):
    """``[(name, module)]`` of every module that draws masks from its own ``rng`` Generator."""
    return [(name, m) for name, m in net.named_modules() if isinstance(getattr(m, "rng", None), np.random.Generator)]


def seed_dropout(net, seed):
    """Give each dropout layer its own Generator derived from ``seed`` (for a network loaded from a file)."""
    for i, (_, m) in enumerate(dropout_layers(net)):
        m.rng = stream(seed, _DROPOUT_STREAM, i)
    return net


def _generator_from_state(state):
    bit_generator = getattr(np.random, state["bit_generator"], None)
    if bit_generator is None:
        raise ValueError(f"unknown bit generator {state['bit_generator']!r} in checkpoint")
    g = np.random.Generator(bit_generator())
    g.bit_generator.state = state
    return g


def dropout_state(net):
    """JSON-able states of the dropout Generators; layers that share one Generator keep sharing it."""
    generators, layers = [], []
    index = {}
    for name, m in dropout_layers(net):
        if id(m.rng) not in index:
            index[id(m.rng)] = len(generators)
            generators.append(m.rng.bit_generator.state)
        layers.append([name, index[id(m.rng)]])
    return {"generators": generators, "layers": layers}


def load_dropout_state(net, state):
    """Inverse of :func:`dropout_state` (replaces each layer's ``rng``)."""
    modules = dict(dropout_layers(net))
    names = [name for name, _ in state["layers"]]
    if sorted(names) != sorted(modules):
        raise ValueError(f"checkpoint has dropout layers {names}, the network has {sorted(modules)}")
    generators = [_generator_from_state(s) for s in state["generators"]]
    for name, i in state["layers"]:
        modules[name].rng = generators[i]


# -- checkpoints ------------------------------------------------------------------------------------
def _canonical(obj):
    return json.loads(json.dumps(obj))


def save_checkpoint(path, net, optimizer, epoch, shuffle_rng, history, config):
    """Write a resumable checkpoint atomically.

    The file is a weights file (:func:`tuckerref.io.save_model`: loadable with ``load_model``) with
    a ``train_state`` group: the optimizer's arrays, and attributes ``epoch``, ``optimizer`` (type,
    hyper-parameters, step), ``shuffle_rng`` and ``dropout`` (bit-generator states), ``history``
    and ``config`` (what a resume must match), all JSON.
    """
    opt = optimizer.state_dict()
    with atomic_path(path) as tmp:
        save_model(tmp, net, meta={"checkpoint": True, "epoch": int(epoch)})
        with h5py.File(tmp, "a") as f:
            g = f.create_group("train_state")
            g.attrs["epoch"] = int(epoch)
            g.attrs["optimizer"] = json.dumps({k: opt[k] for k in ("type", "hyper", "step")})
            g.attrs["shuffle_rng"] = json.dumps(shuffle_rng.bit_generator.state)
            g.attrs["dropout"] = json.dumps(dropout_state(net))
            g.attrs["history"] = json.dumps(history)
            g.attrs["config"] = json.dumps(config)
            arrays = g.create_group("optimizer_arrays")
            for name, value in opt["arrays"].items():
                arrays.create_dataset(name, data=value)
    return Path(path)


def load_checkpoint(path):
    """Read a checkpoint written by :func:`save_checkpoint`; ``ValueError`` for a missing or damaged file.

    Returns ``{"state_dict", "spec", "epoch", "optimizer" (an optimizer ``state_dict``),
    "shuffle_rng" (a Generator), "dropout", "history", "config"}``.
    """
    state_dict, _ = load_weights(path)
    with open_h5(path, "checkpoint") as f:
        if "train_state" not in f:
            raise ValueError(f"checkpoint {path} has no training state (a plain weights file?)")
        try:
            g = f["train_state"]
            opt = json.loads(g.attrs["optimizer"])
            opt["arrays"] = {name: ds[()] for name, ds in g["optimizer_arrays"].items()}
            out = {"state_dict": state_dict, "spec": json.loads(f.attrs["spec"]), "epoch": int(g.attrs["epoch"]),
                   "optimizer": opt, "shuffle_rng": _generator_from_state(json.loads(g.attrs["shuffle_rng"])),
                   "dropout": json.loads(g.attrs["dropout"]), "history": json.loads(g.attrs["history"]),
                   "config": json.loads(g.attrs["config"])}
        except (KeyError, OSError, TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {path} is damaged: {exc}") from None
    return out


def _check_same_data(path, recorded, now):
    """Refuse to resume on other data than the checkpoint's, naming both data files and what differs.
    A checkpoint written before data fingerprints were recorded is accepted."""
    if recorded is None or now is None:
        return
    keys = ("clip_shape", "dtype", "n", "sha256", "subset")
    diff = [k for k in keys if recorded.get(k) != now.get(k)]
    if diff:
        details = ", ".join(f"{k} {recorded.get(k)!r} vs {now.get(k)!r}" for k in diff)
        raise ValueError(f"checkpoint {path} was made on data set {recorded.get('file')}, which differs from "
                         f"{now.get('file')} ({details}); resume with the same data or start afresh")


def _restore(path, net, optimizer, config):
    ckpt = load_checkpoint(path)
    if ckpt["spec"] != _canonical(net.spec()):
        raise ValueError(f"checkpoint {path} holds a different network architecture than the one being trained")
    _check_same_data(path, ckpt["config"].get("data"), config.get("data"))
    ignore = {"data"}
    diff = sorted(k for k in set(config) | set(ckpt["config"])
                  if k not in ignore and config.get(k) != ckpt["config"].get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {ckpt['config'].get(k)!r} vs now {config.get(k)!r}" for k in diff)
        raise ValueError(f"checkpoint {path} was made with other training settings ({details})")
    net.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    load_dropout_state(net, ckpt["dropout"])
    return ckpt["epoch"], ckpt["shuffle_rng"], ckpt["history"]


# -- the loop ---------------------------------------------------------------------------------------
def _progress_bar(total, desc, progress):
    from tqdm.auto import tqdm
    show = sys.stderr.isatty() if progress is None else bool(progress)
    return tqdm(total=total, desc=desc, leave=False, disable=not show, unit="batch", file=sys.stderr)


def data_fingerprint(dataset) -> dict:
    """What a resumed run must find unchanged in its data: the file (for messages only), clip shape,
    dtype, a content digest of the clips, labels and names (:meth:`ClipDataset.fingerprint`, or a
    digest of the arrays of an :class:`ArrayDataset`) and, for a :class:`Subset`, its indices."""
    base, indices = dataset, None
    if isinstance(dataset, Subset):
        base, indices = dataset.dataset, dataset.indices
    if isinstance(base, ClipDataset):
        out = base.fingerprint()
        out["file"] = str(base.path)
    else:
        clips = np.ascontiguousarray(getattr(base, "clips", np.empty(0)))
        h = hashlib.sha256(f"{list(clips.shape)}|{clips.dtype.str}|".encode())
        h.update(clips.tobytes())
        h.update(np.asarray(base.labels, dtype="<i8").tobytes())
        out = {"clip_shape": list(clip_shape_of(base)) if len(base) else [], "dtype": str(clips.dtype),
               "n": len(base), "sha256": h.hexdigest(), "file": f"<in-memory {type(base).__name__}>"}
    if indices is not None:
        out["subset"] = hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()[:16]
    return out


def _labels_hash(dataset):
    return hashlib.sha1(np.asarray(dataset.labels, dtype=np.int64).tobytes()).hexdigest()[:16]


def train_epoch(net, dataset, optimizer, rng, batch_size, desc="", progress=None):
    """One pass over ``dataset`` in an order drawn from ``rng``; returns (mean loss, accuracy).

    Each mini-batch: forward in training mode, L = mean cross-entropy, ``net.backward(dL/dlogits)``,
    ``optimizer.step()``. The loss and accuracy are those of the training-mode forward passes.
    """
    n = len(dataset)
    order = rng.permutation(n)
    net.train()
    total_loss, correct, seen = 0.0, 0, 0
    with _progress_bar((n + batch_size - 1) // batch_size, desc, progress) as bar:
        for b, start in enumerate(range(0, n, batch_size)):
            idx = np.sort(order[start:start + batch_size])  # order inside a batch is immaterial; sorted reads are faster
            x, y = dataset.batch(idx)
            optimizer.zero_grad()
            logits = net.forward(x)
            try:
                loss, grad = softmax_cross_entropy(logits, y)
            except ValueError as exc:
                raise ValueError(f"training diverged ({desc} batch {b}): {exc}; try a smaller learning rate") from None
            net.backward(grad)
            optimizer.step()
            total_loss += loss * idx.size
            correct += int(np.sum(np.argmax(logits, axis=1) == y))
            seen += idx.size
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}", refresh=False)
            bar.update()
    return total_loss / n, correct / n


def fit(net, train_data, test_data=None, *, epochs=10, optimizer=None, batch_size=20, seed=0,
        checkpoint_dir=None, resume=False, progress=None, log=None, eval_batch_size=None):
    """Train ``net`` in place on ``train_data`` for ``epochs`` epochs; returns the history.

    ``optimizer`` is an :class:`tuckerref.optim.Optimizer` over ``net.parameters()``, a name
    (``"sgd"``/``"adam"``) or ``None`` for the paper's SGD (lr 0.001, momentum 0.7, weight decay
    0.01). The shuffling order comes from ``seed`` (its own stream, see :func:`stream`).
    With ``checkpoint_dir`` a checkpoint (:func:`save_checkpoint`) replaces
    ``checkpoint_dir/checkpoint.h5`` after every epoch; ``resume=True`` loads it first (weights,
    optimizer, shuffling and dropout random states, history) and continues with the next epoch, so
    that the final weights are bit-for-bit those of an uninterrupted run with the same settings.
    ``progress``: a tqdm bar per epoch (``None``: only on a terminal). ``log``: called with one
    summary line per epoch (e.g. ``print``).

    The history is a list with one dict per epoch: ``epoch``, ``train_loss``, ``train_acc``,
    ``test_loss``, ``test_acc`` (NaN without ``test_data``) and ``seconds``.

    Training sets the process's allocator to keep freed blocks for the next step
    (:func:`tuckerref.allocation.keep_freed_memory`).
    """
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"epochs must be >= 0 and batch_size >= 1, got {epochs} and {batch_size}")
    validate_data(net, train_data, "training data")
    if test_data is not None and len(test_data):
        validate_data(net, test_data, "test data")
    keep_freed_memory()
    if optimizer is None or isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer or "sgd", net.parameters())
    eval_batch_size = eval_batch_size or batch_size
    config = {"optimizer": type(optimizer).__name__, "hyper": optimizer.hyper, "batch_size": int(batch_size),
              "seed": int(seed), "n_train": len(train_data), "train_labels": _labels_hash(train_data),
              "n_test": 0 if test_data is None else len(test_data),
              "data": data_fingerprint(train_data) if resume or checkpoint_dir is not None else None}
    config = _canonical(config)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    rng, history, start = stream(seed, _SHUFFLE_STREAM), [], 0
    if resume:
        if path is None:
            raise ValueError("resume needs a checkpoint directory")
        if not path.exists():
            raise ValueError(f"cannot resume: no checkpoint {path}")
        start, rng, history = _restore(path, net, optimizer, config)
        if log:
            log(f"resumed from {path} after epoch {start}")
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        loss, acc = train_epoch(net, train_data, optimizer, rng, batch_size, f"epoch {epoch}/{epochs}", progress)
        ev = evaluate(net, test_data, eval_batch_size) if test_data is not None and len(test_data) else None
        row = {"epoch": epoch, "train_loss": loss, "train_acc": acc,
               "test_loss": ev["loss"] if ev else float("nan"), "test_acc": ev["accuracy"] if ev else float("nan"),
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if path is not None:
            save_checkpoint(path, net, optimizer, epoch, rng, history, config)
        if log:
            test = f"  test loss {row['test_loss']:.4f} acc {100 * row['test_acc']:5.1f}%" if ev else ""
            log(f"epoch {epoch:>3}/{epochs}  train loss {loss:.4f} acc {100 * acc:5.1f}%{test}  {row['seconds']:.1f} s")
    net.eval()
    return history


__all__ = ["ArrayDataset", "Subset", "fit", "train_epoch", "evaluate", "validate_data", "train_test_split", "kfold",
           "accuracy", "confusion_matrix", "save_checkpoint", "load_checkpoint", "seed_dropout", "stream",
           "split_fingerprint", "data_fingerprint", "clip_shape_of", "OPTIMIZERS", "CHECKPOINT_NAME"]

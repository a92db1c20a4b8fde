"""Training loop, splits, metrics, checkpoints and the train/finetune/evaluate commands."""
from collections import OrderedDict

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerref.io import load_model, save_model
from tuckerref.models import thetis_net
from tuckerref.nn import Conv3d, Dropout, Dropout3d, Flatten, Linear, MaxPool3d, ReLU, Sequential
from tuckerref.optim import SGD, Adam
from tuckerref.train import (CHECKPOINT_NAME, ArrayDataset, Subset, confusion_matrix, evaluate, fit, kfold,
                             load_checkpoint, train_test_split)

SHAPE = (2, 4, 6, 6)


def tiny_net(seed=0):
    rng = np.random.default_rng(seed)
    net = Sequential(OrderedDict([
        ("c1", Conv3d(2, 3, 3, padding=1, rng=rng)), ("relu1", ReLU()), ("pool1", MaxPool3d(2)),
        ("drop1", Dropout3d(0.2, rng=rng)), ("flatten", Flatten()),
        ("l1", Linear(3 * 2 * 3 * 3, 8, rng=rng)), ("relu2", ReLU()), ("drop2", Dropout(0.3, rng=rng)),
        ("l_out", Linear(8, 2, rng=rng))]))
    net.c1.needs_input_grad = False
    net.input_shape = SHAPE
    return net


def separable_data(n=40, seed=0, shape=SHAPE):
    """Class 1 clips are brighter in their first channel: separable by a linear read-out."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    x = rng.integers(0, 100, size=(n,) + shape).astype(np.uint8)
    x[labels == 1, 0] += 120
    return ArrayDataset(x, labels)


def test_training_loss_decreases_on_a_separable_set():
    ds = separable_data()
    net = tiny_net()
    hist = fit(net, ds, ds, epochs=8, optimizer=SGD(net.parameters(), lr=0.05, momentum=0.7), batch_size=8,
               progress=False)
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["test_acc"] == 1.0
    assert [h["epoch"] for h in hist] == list(range(1, 9))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_resume_after_interruption_is_bit_identical_to_uninterrupted_run(tmp_path, kind):
    ds = separable_data(30)
    train, test = Subset(ds, np.arange(24)), Subset(ds, np.arange(24, 30))

    class Interrupting(Subset):
        """Raises KeyboardInterrupt at its 13th batch: in the middle of epoch 3 (5 batches per epoch)."""
        calls = 0

        def batch(self, indices):
            type(self).calls += 1
            if self.calls == 13:
                raise KeyboardInterrupt
            return super().batch(indices)

    def run(epochs, ckpt, resume=False, train=train):
        net = tiny_net(1)
        opt = (SGD(net.parameters(), lr=0.01, momentum=0.7, weight_decay=0.01) if kind == "sgd"
               else Adam(net.parameters(), lr=0.01, weight_decay=0.01))
        hist = fit(net, train, test, epochs=epochs, optimizer=opt, batch_size=5, seed=3, checkpoint_dir=ckpt,
                   resume=resume, progress=False)
        return net, hist

    full, full_hist = run(4, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(4, tmp_path / "b", train=Interrupting(ds, np.arange(24)))
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)["epoch"] == 2
    resumed, hist = run(4, tmp_path / "b", resume=True)
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert np.array_equal(a, b), name
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in hist]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in full_hist]
    # and a checkpoint is itself a loadable network
    net, meta = load_model(tmp_path / "b" / CHECKPOINT_NAME)
    assert meta["epoch"] == 4 and np.array_equal(net.l_out.weight.data, resumed.l_out.weight.data)


def test_resume_with_other_settings_or_missing_or_corrupt_checkpoint_fails_clearly(tmp_path):
    ds = separable_data(10)
    fit(tiny_net(), ds, epochs=1, batch_size=5, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        fit(tiny_net(), ds, epochs=2, batch_size=4, checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="no checkpoint"):
        fit(tiny_net(), ds, epochs=2, checkpoint_dir=tmp_path / "empty", resume=True, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match="not a readable HDF5"):
        fit(tiny_net(), ds, epochs=2, batch_size=5, checkpoint_dir=tmp_path, resume=True, progress=False)
    weights = tmp_path / "plain.h5"
    save_model(weights, tiny_net())
    with pytest.raises(ValueError, match="no training state"):
        load_checkpoint(weights)


def test_data_validation_names_the_fault():
    net = tiny_net()
    with pytest.raises(ValueError, match="shape"):
        fit(net, separable_data(4, shape=(2, 4, 6, 5)), epochs=1, progress=False)
    bad = separable_data(4)
    bad.labels[0] = 2
    with pytest.raises(ValueError, match="labels"):
        fit(net, bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match="non-finite"):
        ArrayDataset(np.full((2,) + SHAPE, np.nan, np.float32), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit(net, ArrayDataset(np.full((2,) + SHAPE, 3.0, np.float32), [0, 1]), epochs=1, progress=False)


@settings(deadline=None, max_examples=25)
@given(n=st.integers(5, 60), k=st.integers(2, 5), seed=st.integers(0, 10**6), classes=st.integers(1, 3))
def test_kfold_test_folds_are_disjoint_and_cover_the_set(n, k, seed, classes):
    labels = np.arange(n) % classes
    folds = kfold(n, k, seed, stratify=labels)
    tests = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(tests), np.arange(n))
    for tr, te in folds:
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(n))
    sizes = [te.size for _, te in folds]
    assert max(sizes) - min(sizes) <= 1
    assert kfold(n, k, seed, stratify=labels)[0][1].tolist() == folds[0][1].tolist()


@settings(deadline=None, max_examples=25)
@given(n0=st.integers(2, 40), n1=st.integers(2, 40), frac=st.sampled_from([0.05, 0.1, 0.3]), seed=st.integers(0, 99))
def test_stratified_split_keeps_every_class_in_both_parts(n0, n1, frac, seed):
    labels = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    tr, te = train_test_split(labels.size, frac, seed, stratify=labels)
    assert np.intersect1d(tr, te).size == 0 and tr.size + te.size == labels.size
    assert set(labels[te]) == {0, 1} and set(labels[tr]) == {0, 1}
    again = train_test_split(labels.size, frac, seed, stratify=labels)
    assert np.array_equal(again[1], te)


def test_confusion_matrix_and_evaluate_agree():
    cm = confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 2)
    assert cm.tolist() == [[1, 1], [1, 2]]
    ds = separable_data(10)
    net = tiny_net()
    ev = evaluate(net, ds, batch_size=3)
    assert ev["confusion"].sum() == 10 and np.trace(ev["confusion"]) == round(ev["accuracy"] * 10)
    assert net.training  # mode restored


def test_paper_network_trains_one_step_on_small_clips():
    shape = (4, 8, 32, 32)
    net = thetis_net(shape, seed=0)
    ds = separable_data(4, shape=shape)
    before = net.l_out.weight.data.copy()
    hist = fit(net, ds, epochs=1, batch_size=2, progress=False)
    assert np.isfinite(hist[0]["train_loss"]) and not np.array_equal(before, net.l_out.weight.data)


# -- commands ---------------------------------------------------------------------------------------
def _write_clips(path, n=24, shape=SHAPE):
    from tuckerref.data.store import write_dataset
    ds = separable_data(n, shape=shape)
    write_dataset(path, ds.clips, ds.labels, [f"clip{i}" for i in range(n)])


@pytest.fixture
def main(monkeypatch):
    """The CLI entry point with only this module's commands (others may be half-built)."""
    from tuckerref import cli
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["train"])
    return cli.main


def test_train_finetune_evaluate_commands_share_the_split(tmp_path, capsys, main):
    data, orig = tmp_path / "clips.h5", tmp_path / "orig.h5"
    _write_clips(data, shape=(4, 8, 32, 32))
    assert main(["train", str(data), str(orig), "--epochs", "1", "--batch-size", "4", "--seed", "5",
                 "--test-fraction", "0.25", "--no-progress"]) == 0
    _, meta = load_model(orig)
    assert meta["command"] == "train" and meta["split"]["n_test"] == 6 and meta["seed"] == 5
    derived = tmp_path / "derived.h5"  # e.g. a compressed network: the original's meta is nested
    net, _ = load_model(orig)
    save_model(derived, net, meta={"source_meta": meta})
    tuned = tmp_path / "tuned.h5"
    assert main(["finetune", str(derived), str(data), str(tuned), "--epochs", "1", "--batch-size", "4",
                 "--no-progress"]) == 0
    _, tmeta = load_model(tuned)
    assert tmeta["split"] == meta["split"] and tmeta["seed"] == 5  # split taken from the weights file
    capsys.readouterr()
    assert main(["evaluate", str(tuned), str(data)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion" in out and "6 clips" in out
    assert main(["evaluate", str(tuned), str(data), "--seed", "6"]) == 0
    assert "differs from the one recorded" in capsys.readouterr().err


def test_train_kfold_folds_give_the_same_numbers_serially_and_in_worker_processes(tmp_path, main):
    """Each fold carries its seed and thread count: this process (--workers 0) and two local worker
    processes give the same accuracies, losses and last network, bit for bit."""
    data = tmp_path / "clips.h5"
    _write_clips(data, n=12, shape=(4, 8, 32, 32))
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"cv{workers}.h5"
        assert main(["train", str(data), str(out), "--kfold", "3", "--epochs", "1", "--batch-size", "4",
                     "--workers", workers, "--no-progress"]) == 0
        runs[workers] = load_model(out)
    (serial, meta), (parallel, pmeta) = runs["0"], runs["2"]
    assert len(meta["kfold_test_accuracy"]) == 3 and meta["split"]["n_test"] == 4
    for key in ("kfold_test_accuracy", "kfold_history", "accuracy"):
        assert _without_seconds(meta[key]) == _without_seconds(pmeta[key])
    for (name, a), (_, b) in zip(serial.state_dict().items(), parallel.state_dict().items()):
        assert np.array_equal(a, b), name


def _without_seconds(value):
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_commands_report_missing_or_corrupt_files(tmp_path, capsys, main):
    data = tmp_path / "clips.h5"
    _write_clips(data, n=6)
    assert main(["evaluate", str(tmp_path / "missing.h5"), str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5 at all")
    assert main(["finetune", str(bad), str(data), str(tmp_path / "o.h5")]) == 2
    assert "not a readable HDF5" in capsys.readouterr().err
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = 1
    assert main(["train", str(tmp_path / "foreign.h5"), str(tmp_path / "o.h5")]) == 2
    assert "foreign.h5" in capsys.readouterr().err


def test_keep_freed_memory_is_accepted_by_glibc_and_harmless_elsewhere():
    """The allocator policy that training sets: glibc's malloc accepts it (True); elsewhere it is a no-op
    (False) and never raises."""
    import platform
    from tuckerref.allocation import keep_freed_memory
    accepted = keep_freed_memory()
    assert isinstance(accepted, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert accepted

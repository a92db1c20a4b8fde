"""Bad paths, arguments and files: refused before any work, with the file, option or value named,
and never at the cost of an input or of a finished run."""
import json
import os
import shlex
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import pytest

from tuckerref import cli
from tuckerref.data.store import ClipDataset, write_dataset
from tuckerref.io import load_model, load_weights, save_model
from tuckerref.nn import Conv3d, Flatten, Linear, MaxPool3d, ReLU, Sequential
from tuckerref.outputs import check_output_dir, check_output_file, check_outputs, save_or_fallback
from tuckerref.train import CHECKPOINT_NAME, Subset, fit

ROOT = Path(__file__).resolve().parents[1]
TINY = (2, 4, 6, 6)       # clips for the tiny network (library-level tests)
PAPER_SMALL = (4, 8, 32, 32)  # the smallest clips the paper network's commands accept


def tiny_net(seed=0):
    rng = np.random.default_rng(seed)
    net = Sequential(OrderedDict([
        ("c1", Conv3d(2, 3, 3, padding=1, rng=rng)), ("relu1", ReLU()), ("pool1", MaxPool3d(2)),
        ("flatten", Flatten()), ("l_out", Linear(3 * 2 * 3 * 3, 2, rng=rng))]))
    net.input_shape = TINY
    return net


def write_clips(path, n, shape, seed=0):
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 255, size=(n,) + shape, dtype=np.uint8)
    write_dataset(path, clips, np.arange(n) % 2, [f"clip{i}" for i in range(n)])
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small clip set for the paper network, a tiny clip set and a tiny network's weights file."""
    d = tmp_path_factory.mktemp("bad_input")
    paper = write_clips(d / "paper.h5", 8, PAPER_SMALL)
    tiny = write_clips(d / "tiny.h5", 8, TINY)
    weights = save_model(d / "tiny_w.h5", tiny_net())
    return {"dir": d, "paper": paper, "tiny": tiny, "weights": weights}


def run_cli(args, capsys):
    capsys.readouterr()
    code = cli.main([str(a) for a in args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


# -- 1, 2: output paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make_args", [
    lambda f: ["train", f["paper"], f["paper"], "--epochs", "1"],
    lambda f: ["finetune", f["weights"], f["tiny"], f["tiny"], "--epochs", "1"],
    lambda f: ["finetune", f["weights"], f["tiny"], f["weights"], "--epochs", "1"],
    lambda f: ["compress", f["weights"], f["weights"]],
], ids=["train-data", "finetune-data", "finetune-weights", "compress-input"])
def test_output_that_is_an_input_is_refused_and_the_input_survives(files, capsys, make_args):
    args = make_args(files)
    before = {p: Path(p).read_bytes() for p in (files["paper"], files["tiny"], files["weights"])}
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "is also an input of this command" in err
    assert {p: Path(p).read_bytes() for p in before} == before


def test_output_given_through_another_name_of_an_input_is_refused(files):
    link = files["dir"] / "alias.h5"
    if not link.exists():
        os.link(files["tiny"], link)  # a hard link: another path, the same file
    with pytest.raises(ValueError, match=r"OUT .*alias\.h5 is also an input"):
        check_output_file("OUT", link, inputs=[files["tiny"]])
    with pytest.raises(ValueError, match="is also an input"):
        check_output_file("OUT", files["dir"] / "sub" / ".." / "tiny.h5", inputs=[files["tiny"]])


def test_output_path_checks_name_the_option_and_the_path(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=rf"OUT {tmp_path}/file/x.h5: .*file is not a directory"):
        check_output_file("OUT", a_file / "x.h5")
    with pytest.raises(ValueError, match=rf"OUT {tmp_path} is a directory"):
        check_output_file("OUT", tmp_path)
    with pytest.raises(ValueError, match=r"directory .*missing does not exist"):
        check_output_file("OUT", tmp_path / "missing" / "x.h5")
    with pytest.raises(ValueError, match=rf"OUTDIR {tmp_path}/file exists and is not a directory"):
        check_output_dir("OUTDIR", a_file)
    with pytest.raises(ValueError, match=rf"OUTDIR {tmp_path}/file/sub: .*is not a directory"):
        check_output_dir("OUTDIR", a_file / "sub")
    with pytest.raises(ValueError, match="--b and --a name the same file"):
        check_outputs(files={"--a": tmp_path / "o.h5", "--b": tmp_path / "." / "o.h5"})
    assert check_output_dir("OUTDIR", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    check_outputs(files={"OUT": tmp_path / "o.h5", "--report": None}, dirs={"--out": tmp_path})


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=r"OUT .*locked is not writable"):
            check_output_file("OUT", locked / "x.h5")
        with pytest.raises(ValueError, match=r"OUTDIR .*locked is not a writable directory"):
            check_output_dir("OUTDIR", locked)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("make_args, option", [
    (lambda f, d: ["train", f["paper"], d / "file" / "x.h5", "--epochs", "2"], "OUT"),
    (lambda f, d: ["train", f["paper"], d, "--epochs", "1"], "OUT"),
    (lambda f, d: ["train", f["paper"], d / "o.h5", "--checkpoint-dir", d / "file"], "--checkpoint-dir"),
    (lambda f, d: ["compress", f["weights"], d / "file" / "c.h5"], "OUTPUT"),
    (lambda f, d: ["export-c", f["weights"], d / "file"], "OUTDIR"),
    (lambda f, d: ["data", "synth", d / "file" / "s.h5", "--n", "2", "--shape", "2", "8", "8"], "OUT.h5"),
    (lambda f, d: ["data", "thetis-template", d, d / "file" / "t.csv"], "OUT.csv"),
    (lambda f, d: ["demo", "--out", d / "file"], "--out"),
], ids=["train-file-parent", "train-dir", "train-ckpt", "compress", "export-c", "synth", "template", "demo"])
def test_commands_refuse_an_unwritable_output_before_any_work(files, tmp_path, capsys, make_args, option):
    (tmp_path / "file").write_text("a regular file")
    code, out, err = run_cli(make_args(files, tmp_path), capsys)
    assert code == 2 and err.startswith("tuckerref ") and f": error: {option} " in err, err
    assert "epoch" not in out  # nothing was trained


def test_finished_run_is_saved_elsewhere_when_its_output_cannot_be_written(files, tmp_path, capsys, monkeypatch):
    """The output cannot be written when training ends: the network goes beside the checkpoint."""
    import tuckerref.io as io
    out, ckpt = tmp_path / "gone" / "net.h5", tmp_path / "ckpt"
    out.parent.mkdir()
    real_save = io.save_model

    def failing_save(path, net, meta=None):
        if Path(path) == out:
            raise PermissionError(13, "Permission denied", str(path))
        return real_save(path, net, meta=meta)

    monkeypatch.setattr(io, "save_model", failing_save)
    # finetune on the tiny network: the same save path as train (commands/train.py _save), without
    # compiling the paper network's training kernels for this test alone
    code, stdout, err = run_cli(["finetune", files["weights"], files["tiny"], out, "--epochs", "1",
                                 "--batch-size", "4", "--checkpoint-dir", ckpt, "--no-progress"], capsys)
    kept = ckpt / "net.h5"
    assert code == 0 and f"saved to {kept} instead" in err and f"saved {kept}" in stdout
    net, meta = load_model(kept)
    assert meta["command"] == "finetune" and not out.exists()


def test_save_or_fallback_ends_in_the_temporary_directory_when_every_candidate_fails(tmp_path):
    written, lines = [], []

    def save(path):
        if "cand" in str(path) or path == tmp_path / "out.h5":
            raise OSError("disk full")
        Path(path).write_text("result")
        written.append(Path(path))

    target = save_or_fallback(save, tmp_path / "out.h5", log=lines.append, candidates=[tmp_path / "cand.h5"])
    try:
        assert written == [target] and target.read_text() == "result" and target.name.startswith("out-")
        assert "disk full" in lines[0] and str(target) in lines[0]
    finally:
        target.unlink()


# -- 3: resume fingerprint ------------------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_made_on_other_data_with_the_same_names_and_labels(tmp_path):
    first = write_clips(tmp_path / "first.h5", 8, TINY, seed=1)
    other = write_clips(tmp_path / "other.h5", 8, TINY, seed=2)  # same names and labels, other clips
    ckpt = tmp_path / "ckpt"
    with ClipDataset(first) as ds:
        fit(tiny_net(), Subset(ds, np.arange(8)), epochs=1, batch_size=4, checkpoint_dir=ckpt, progress=False)
    with ClipDataset(other) as ds, pytest.raises(ValueError) as info:
        fit(tiny_net(), Subset(ds, np.arange(8)), epochs=2, batch_size=4, checkpoint_dir=ckpt, resume=True,
            progress=False)
    message = str(info.value)
    assert str(ckpt / CHECKPOINT_NAME) in message and str(first) in message and str(other) in message
    assert "sha256" in message
    with ClipDataset(first) as ds:  # the same data still resumes
        history = fit(tiny_net(), Subset(ds, np.arange(8)), epochs=2, batch_size=4, checkpoint_dir=ckpt,
                      resume=True, progress=False)
    assert [h["epoch"] for h in history] == [1, 2]


def test_data_fingerprint_sees_the_clip_shape():
    from tuckerref.train import ArrayDataset, data_fingerprint
    a = data_fingerprint(ArrayDataset(np.zeros((2, 2, 4, 6, 6), np.uint8), [0, 1]))
    b = data_fingerprint(ArrayDataset(np.zeros((2, 2, 6, 4, 6), np.uint8), [0, 1]))
    assert a["sha256"] != b["sha256"] and a["clip_shape"] != b["clip_shape"]


# -- 4, 5: arguments and files --------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--kfold", "0"], "--kfold must be >= 2"),
    (["--kfold", "-3"], "--kfold must be >= 2"),
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--momentum", "5"], "--momentum must lie in [0, 1)"),
    (["--momentum", "-0.1"], "--momentum must lie in [0, 1)"),
    (["--kfold", "3", "--test-fraction", "0.2"], "--test-fraction and --kfold exclude each other"),
    (["--kfold", "3", "--workers", "-1"], "--workers must be >= 0"),
    (["--workers", "2"], "--workers applies to --kfold only"),
    (["--dropout", "1"], "--dropout must lie in [0, 1)"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--test-fraction", "1.5"], "--test-fraction must lie in [0, 1)"),
    (["--resume"], "--resume needs --checkpoint-dir"),
])
def test_training_option_out_of_range_is_refused_naming_the_option(files, tmp_path, capsys, extra, message):
    code, _, err = run_cli(["train", files["paper"], tmp_path / "o.h5", *extra], capsys)
    assert code == 2 and message in err and not (tmp_path / "o.h5").exists()


def test_empty_data_set_is_refused_naming_the_file(files, tmp_path, capsys):
    empty = tmp_path / "empty.h5"
    write_dataset(empty, np.zeros((0,) + TINY, np.uint8), [], [])
    for args in (["train", empty, tmp_path / "o.h5", "--epochs", "1"], ["evaluate", files["weights"], empty]):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and f"clip data set {empty} holds no clips" in err


def test_evaluate_with_no_clips_to_score_is_refused_rather_than_printing_nan(files, capsys):
    code, out, err = run_cli(["evaluate", files["weights"], files["tiny"], "--test-fraction", "0"], capsys)
    assert code == 2 and "holds no clips" in err and "nan" not in out


def _rewrite(path, attrs=None, datasets=None):
    with h5py.File(path, "a") as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        for name, value in (datasets or {}).items():
            del f[name]
            f[name] = value
    return path


@pytest.mark.parametrize("change, message", [
    (lambda p: _rewrite(p, attrs={"spec": json.dumps([1, 2])}), "attribute 'spec' must be a JSON object"),
    (lambda p: _rewrite(p, attrs={"meta": json.dumps(["a"])}), "attribute 'meta' must be a JSON object"),
    (lambda p: _rewrite(p, datasets={"l_out.bias": np.array([1, 2])}), "parameter 'l_out.bias' has dtype int64"),
    (lambda p: _rewrite(p, datasets={"l_out.bias": np.array([b"a", b"b"])}), "parameter 'l_out.bias' has dtype"),
    (lambda p: _rewrite(p, attrs={"spec": json.dumps({"type": "Sequential", "children": [
        ["c1", {"type": "Conv3d", "config": {"in_channels": 2, "out_channels": "six", "kernel_size": 3}}]]})}),
     "layer 'c1' (Conv3d) cannot be built"),
], ids=["spec-list", "meta-list", "integer-weights", "string-parameter", "out-channels-six"])
def test_malformed_weights_file_is_refused_naming_the_file_and_the_entry(tmp_path, capsys, change, message):
    path = change(save_model(tmp_path / "w.h5", tiny_net()))
    with pytest.raises(ValueError, match=rf"weights file {tmp_path}/w.h5.*{__import__('re').escape(message)}"):
        load_model(path)


def test_non_finite_weights_are_refused_by_evaluate_naming_the_parameter(files, tmp_path, capsys):
    net = tiny_net()
    net.l_out.weight.data[0, 0] = np.nan
    path = save_model(tmp_path / "nan.h5", net)
    code, out, err = run_cli(["evaluate", path, files["tiny"], "--split", "all"], capsys)
    assert code == 2 and f"weights file {path}: parameter 'l_out.weight' holds 1 non-finite" in err


def test_clip_file_with_float_labels_is_refused_naming_it(tmp_path):
    path = _rewrite(write_clips(tmp_path / "c.h5", 4, TINY), datasets={"labels": np.array([0.0, 1.0, 0.5, 1.0])})
    with pytest.raises(ValueError, match=rf"clip data set {path} has labels of dtype float64"):
        ClipDataset(path)


# -- 7: checksums ---------------------------------------------------------------------------------------
def test_bytes_changed_inside_a_parameter_are_caught_by_its_checksum(tmp_path):
    path = save_model(tmp_path / "w.h5", tiny_net())
    with h5py.File(path, "a") as f:
        f["c1.weight"][0, 0, 0, 0, 0] += 1.0  # in place: the stored checksum stays
    with pytest.raises(ValueError, match=rf"weights file {path} is damaged: parameter 'c1.weight' does not "
                                         "match its checksum"):
        load_weights(path)


def test_weights_file_without_checksums_still_loads(tmp_path):
    net = tiny_net()
    path = save_model(tmp_path / "w.h5", net)
    with h5py.File(path, "a") as f:
        for name in net.state_dict():
            del f[name].attrs["sha256"]
    loaded, _ = load_model(path)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[name], value)


def test_committed_weight_files_load():
    for path in sorted((ROOT / "weights").glob("*.h5")):
        state, meta = load_weights(path)
        assert state and isinstance(meta, dict)


# -- 6: export-c ----------------------------------------------------------------------------------------
def test_export_c_blob_run_command_works_from_any_directory(files, tmp_path, capsys):
    outdir = tmp_path / "dir with space"
    code, out, _ = run_cli(["export-c", files["weights"], outdir, "--weights-format", "blob"], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("build: "))
    build, run = line[len("build: "):].split("    run: ")
    assert shlex.split(build) == ["make", "-C", str(outdir.resolve())]
    argv = shlex.split(run)
    assert argv[0] == str(outdir.resolve() / "net") and argv[1:3] == ["-w", str(outdir.resolve() / "weights.bin")]
    assert Path(argv[2]).is_file()


# -- 8, 9: the entry point ------------------------------------------------------------------------------
def _python(code, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *code, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


def test_help_imports_no_numeric_library():
    probe = ("import sys\nfrom tuckerref.cli import main\n"
             "for argv in (['--help'], ['train', '--help'], ['export-c', '--help'], ['data', 'synth', '--help'],\n"
             "             ['study', 'ranks', '--help'], ['import-onnx', '--help'], ['fold', '--help']):\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('numpy', 'numba', 'scipy', 'h5py') if m in sys.modules))")
    proc = _python(["-c", probe])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_python_dash_m_tuckerref_runs_the_command_line(tmp_path):
    proc = _python(["-m", "tuckerref"], "--help")
    assert proc.returncode == 0 and "export-c" in proc.stdout and "usage: tuckerref" in proc.stdout
    proc = _python(["-m", "tuckerref"], "train", tmp_path / "d.h5", tmp_path / "o.h5", "--epochs", "0")
    assert proc.returncode == 2 and "--epochs must be >= 1" in proc.stderr and "Traceback" not in proc.stderr


def test_parser_summaries_and_choices_match_the_commands_and_the_engine():
    from tuckerref.commands import defaults
    from tuckerref.compress import ALGORITHMS, PLANS
    from tuckerref.data import digits
    from tuckerref.data.synthetic import DEFAULT_SHAPE, LEFT_HANDED_FRACTION
    from tuckerref.data.thetis import DEFAULT_SHOTS
    from tuckerref.export import WEIGHTS_FORMATS
    from tuckerref.models import PAPER_INPUT_SHAPE
    from tuckerref.optim import OPTIMIZERS
    from tuckerref.profile import PROFILERS
    from tuckerref.train import CHECKPOINT_NAME as ckpt_name
    from tuckerref.tucker import METHODS
    assert defaults.PAPER_INPUT_SHAPE == PAPER_INPUT_SHAPE and defaults.PLANS == PLANS
    assert defaults.OPTIMIZER_NAMES == tuple(sorted(OPTIMIZERS)) and defaults.CHECKPOINT_NAME == ckpt_name
    assert defaults.METHODS == METHODS and defaults.WEIGHTS_FORMATS == WEIGHTS_FORMATS
    assert defaults.ALGORITHMS == ALGORITHMS
    assert defaults.SYNTH_SHAPE == DEFAULT_SHAPE and defaults.LEFT_HANDED_FRACTION == LEFT_HANDED_FRACTION
    assert defaults.THETIS_SHOTS == DEFAULT_SHOTS and defaults.PROFILER_NAMES == tuple(PROFILERS)
    assert (defaults.DIGITS_SHAPE, defaults.DIGITS_CHANNELS, defaults.DIGITS_CHANNEL_CHOICES) == (
        digits.DEFAULT_SHAPE, digits.CHANNELS, digits.CHANNEL_CHOICES)
    parser = cli.build_parser()  # every command module loaded
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert helps == {name: summary for name, _, summary in cli.COMMANDS}

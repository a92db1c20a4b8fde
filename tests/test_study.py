"""The rank study (tuckerref.study): grids are checked before any training; a point gives the same
numbers, bit for bit, in this process, in local worker processes and on a Dask cluster; a study
killed after its first record resumes without redoing it; records are complete JSON lines."""
import json

import numpy as np
import pytest

pytest.importorskip("sklearn")

from tuckerref.data.digits import write_digits
from tuckerref.io import save_model
from tuckerref.models import thetis_net
from tuckerref.study.executor import InlineExecutor, LocalExecutor
from tuckerref.study.grid import energy_rank, layer_kernels, parse_grid, resolve_grid
from tuckerref.study.plots import pareto_front
from tuckerref.study.records import RecordLog
from tuckerref.study.run import run_study

SHAPE = (8, 32, 32)  # the smallest clips the paper's network takes
GRID = ['{"c1": [1, 1], "c2": [1, 1]}', '{"c1": [2, 2], "c2": [1, 1]}',
        '{"c1": [1, 1], "c2": [2, 2]}', '{"c1": [2, 2], "c2": [2, 2]}']
FAST = dict(epochs=1, batch_size=4, test_fraction=0.25, seed=0, time_repeats=1, time_warmup=0, plot=False,
            log=lambda line: None)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    data = write_digits(d / "d.h5", n=12, seed=0, shape=SHAPE)
    weights = d / "w.h5"
    save_model(weights, thetis_net((4,) + SHAPE, seed=0, num_classes=10, dropout=0.0))
    return weights, data


def _train_records(outdir):
    return {(r["key"], r["fold"]): r for r in RecordLog(outdir).read() if r["type"] == "train"}


def _numbers(records):
    return {k: (r["acc_before"], r["acc_after"], r["train_loss"], r["params"], r["flops"]) for k, r in records.items()}


class _NoTraining:
    def describe(self):
        return "none"

    def map_unordered(self, fn, tasks):
        raise AssertionError("training started")


@pytest.mark.parametrize("grid, message", [
    (['{"c1": [0, 1]}'], "must be an integer in [1, 4]"),      # rank 0
    (['{"c1": [5, 1]}'], "must be an integer in [1, 4]"),      # above c1's 4 input channels
    (['{"c2": [1, 17]}'], "must be an integer in [1, 16]"),    # above c2's 16 output channels
    (['{"l2": [1, 2]}'], "needs one integer R"),
    (['{"c1": 2}'], "needs a pair"),
    (['{"conv9": [1, 1]}'], "not layers this plan compresses"),
    (['{"c1": [1, 1]'], "not valid JSON"),
    (["scale:0.5,x"], "is not a number"),
    (["scale:-1"], "scale factor"),
    (["energy:1.5"], "energy fraction"),
    (["ranks=3"], "is not 'evbmf'"),
])
def test_bad_grid_errors_before_any_training(files, tmp_path, grid, message):
    weights, data = files
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_study(weights, data, tmp_path / "out", grid, executor=_NoTraining(), **FAST)
    assert not (tmp_path / "out" / "records.jsonl").exists()


def test_grid_resolves_evbmf_first_scales_within_bounds_and_energy_one_is_full_rank(files):
    from tuckerref.io import load_model
    net, _ = load_model(files[0])
    points = resolve_grid(parse_grid(["scale:0.5,100", "energy:1.0"] + GRID), net)
    kernels = layer_kernels(net)
    assert points[0].kind == "evbmf" and len({p.key for p in points}) == len(points)
    for p in points:
        for name, ranks in p.ranks.items():
            dims = [kernels[name][1].shape[m] for m in kernels[name][2]]
            assert all(1 <= r <= d for r, d in zip(ranks, dims))
    full = next(p for p in points if p.kind == "energy")
    for name, ranks in full.ranks.items():  # the rank of each mode unfolding K_(m)
        kernel = kernels[name][1]
        assert ranks == tuple(min(kernel.shape[m], kernel.size // kernel.shape[m]) for m in kernels[name][2])
    assert energy_rank(np.diag([3.0, 1.0, 0.0]), 0, 0.9) == 1 and energy_rank(np.diag([3.0, 1.0, 0.0]), 0, 0.95) == 2


def test_pareto_front_keeps_points_no_cheaper_point_beats():
    costs, accs = [1, 2, 3, 4, 5], [0.5, 0.4, 0.7, 0.7, 0.9]
    assert pareto_front(costs, accs) == [0, 2, 4]


@pytest.fixture(scope="module")
def inline_run(files, tmp_path_factory):
    """A study killed after its first record (a limit of one task), then resumed."""
    weights, data = files
    out = tmp_path_factory.mktemp("inline")
    run_study(weights, data, out, GRID, executor=InlineExecutor(), limit=1, **FAST)
    first = _train_records(out)
    with open(out / "records.jsonl", "ab") as f:
        f.write(b'{"type": "train", "key": "cut sh')  # a line cut short by the kill
    rows = run_study(weights, data, out, GRID, executor=InlineExecutor(), **FAST)
    return out, first, rows


def test_killed_study_resumes_without_redoing_its_first_point(inline_run):
    out, first, rows = inline_run
    assert len(first) == 1
    lines = (out / "records.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])  # the cut-short line is gone
    records = _train_records(out)
    (key, rec), = first.items()
    assert records[key] == rec  # written once, not redone
    assert sum(json.loads(line)["type"] == "train" for line in lines[:-1]) == len(records) == len(rows)
    assert all(r["acc_after"] is not None and r["time_ms_median"] > 0 for r in rows)
    assert (out / "study.csv").read_text().count("\n") == len(rows) + 1


def test_rerun_with_other_settings_is_refused(files, inline_run):
    weights, data = files
    with pytest.raises(ValueError, match="other settings"):
        run_study(weights, data, inline_run[0], GRID, executor=_NoTraining(), **{**FAST, "epochs": 2})


def test_local_processes_and_dask_cluster_give_the_same_numbers_bit_for_bit(files, inline_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    from tuckerref.study.executor import DaskExecutor
    weights, data = files
    run_study(weights, data, tmp_path / "local", GRID, executor=LocalExecutor(2), **FAST)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        executor = DaskExecutor(client=client)
        run_study(weights, data, tmp_path / "dask", GRID, executor=executor, **FAST)
        hosts = {r["pid"] for r in _train_records(tmp_path / "dask").values()}
    local, dask = _numbers(_train_records(tmp_path / "local")), _numbers(_train_records(tmp_path / "dask"))
    assert len(local) == 1 + len(GRID) and local == dask == _numbers(_train_records(inline_run[0]))
    assert len(hosts) >= 1


def test_command_reports_a_bad_grid_as_an_error(files, tmp_path, capsys):
    from tuckerref.cli import main
    weights, data = files
    assert main(["study", "ranks", str(weights), str(data), str(tmp_path / "out"), "--workers", "0",
                 "--grid", "scale:0.5", '{"c2": [1, 99]}']) == 2
    err = capsys.readouterr().err
    assert "tuckerref study: error:" in err and "c2" in err and "[1, 16]" in err
    assert not (tmp_path / "out" / "records.jsonl").exists()

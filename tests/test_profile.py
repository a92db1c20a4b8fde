"""Per-layer profiling: every layer and sub-layer is timed on the input it sees; bad arguments fail clearly."""
import numba
import numpy as np
import pytest

from tuckerref.compress import compress_network
from tuckerref.models import thetis_net
from tuckerref.nn import InferenceProgram
from unittest import mock

from tuckerref import profile as profile_module
from tuckerref.profile import Stats, capture_inputs, profile_each, profile_network

SHAPE = (2, 8, 32, 32)  # smallest clip the paper network accepts: pool2 gives a 16 x 1 x 1 x 1 volume


@pytest.fixture(scope="module")
def nets():
    net = thetis_net(SHAPE, seed=0)
    comp = compress_network(net, plan="table2", ranks="paper", method="hosvd")
    x = np.random.default_rng(0).random((1,) + SHAPE, dtype=np.float32)
    return net, comp, x


def test_profile_contains_every_layer_and_sublayer(nets):
    _, comp, x = nets
    comp.train()
    prof = profile_network(comp, x, repeats=2, warmup=0, threads=1)
    expected = [name for name, _ in comp.named_modules() if name]
    assert prof.names() == expected
    assert [t.name for t in prof["c1"].children] == ["c1.0", "c1.1", "c1.2"]
    for rec in [prof.total] + [prof[n] for n in expected]:
        assert len(rec.wall.samples) == len(rec.cpu.samples) == 2
        assert rec.wall.median >= 0 and rec.cpu.std >= 0
    assert comp.training, "the network's training mode is restored"
    assert prof.threads == 1 and prof.as_dict()["layers"][0]["name"] == "c1"


def test_captured_inputs_are_what_each_layer_sees(nets):
    net, comp, x = nets
    net.eval()
    inputs = capture_inputs(comp, x)
    assert inputs["c1.1"].shape == (1, 2) + SHAPE[1:]
    # the in-place ReLU after pool1 must not have altered the captured input of relu1 (the raw pooled output)
    assert (inputs["relu1"] < 0).any()
    np.testing.assert_array_equal(inputs["drop1"], np.maximum(inputs["relu1"], 0))
    np.testing.assert_array_equal(inputs["l2.1"], comp.l2[0](inputs["l2"]))


@pytest.mark.parametrize("kwargs, message", [
    ({"repeats": 0}, "repeats must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"threads": 0}, "threads must be an integer in 1.."),
    ({"threads": numba.config.NUMBA_NUM_THREADS + 1}, "threads must be an integer in 1.."),
])
def test_bad_arguments_give_clear_errors(nets, kwargs, message):
    net, _, x = nets
    with pytest.raises(ValueError, match=message):
        profile_network(net, x, **kwargs)


def test_wrong_input_gives_clear_error(nets):
    net, _, x = nets
    with pytest.raises(ValueError, match="does not match the network's input shape"):
        profile_network(net, x[:, :, :6])
    with pytest.raises(ValueError, match="must be a batch"):
        profile_network(net, x[0, 0, 0, 0])
    with pytest.raises(ValueError, match="float numpy array"):
        profile_network(net, x.astype(np.int32))
    with pytest.raises(ValueError, match="expects a Sequential"):
        profile_network(net.c1, x)


def test_table2_rows_join_counts_and_timings_per_layer_and_sublayer(nets, tmp_path):
    from tuckerref.commands.table2 import build_table, render, write_outputs
    net, comp, x = nets
    table = build_table(net, comp, x, profile_network, repeats=1, warmup=0, threads=1)
    assert [r["layer"] for r in table["rows"]] == ["c1", "c2", "l1", "l2", "l_out"]
    c1 = table["rows"][0]
    assert (c1["method"], c1["R_in"], c1["R_out"]) == ("Tucker-2", 2, 2)
    assert [s["name"] for s in c1["compressed"]["sub"]] == ["c1.0", "c1.1", "c1.2"]
    assert table["rows"][3]["method"] == "Tucker-1" and table["rows"][4]["method"] == "none"
    assert table["total"]["improvement"]["theoretical_speedup"] == table["total"]["original"]["flops"] / \
        table["total"]["compressed"]["flops"]
    md, js = write_outputs(tmp_path, table, render(table))
    assert "| c1" in md.read_text() and js.read_text().startswith("{")


def test_cli_bad_arguments_exit_2_with_a_message(capsys):
    from tuckerref.cli import main
    assert main(["table2", "--repeats", "0"]) == 2
    assert main(["scaling", "--threads", "999"]) == 2
    assert main(["scaling", "--layer", "pool1", "--input-shape", *map(str, SHAPE)]) == 2
    err = capsys.readouterr().err
    assert "repeats must be an integer >= 1" in err and "threads must be an integer in 1.." in err
    assert "only convolutions and linear layers" in err


def test_networks_profiled_together_are_timed_round_robin(nets):
    """Warm-up calls first, then ``repeats`` rounds, each timing every layer of the original and of
    the compressed network (and both whole passes, as the library runs them and as compiled
    programs) once, in the same order; each figure keeps its own calls' samples."""
    net, comp, x = nets
    calls = []

    def recorder(fn, inp, repeats, warmup, fresh_input=False):
        calls.append((fn, repeats, warmup))
        return Stats([float(len(calls))] * repeats), Stats([0.0] * repeats)

    with mock.patch.object(profile_module, "time_call", recorder):
        original, compressed = profile_each(profile_network, [net, comp], x, repeats=3, warmup=2, threads=1)
    n = len(original.names()) + len(compressed.names()) + 4
    warm, timed = calls[:n], calls[n:]
    assert all((r, w) == (0, 2) for _, r, w in warm) and all((r, w) == (1, 0) for _, r, w in timed)
    order = [fn for fn, _, _ in warm]
    assert [fn for fn, _, _ in timed] == order * 3
    # each network's calls close with its whole pass, then the same pass compiled
    first_total = len(original.names())
    assert order[first_total] == net.forward and order[-2] == comp.forward
    assert isinstance(order[first_total + 1], InferenceProgram) and isinstance(order[-1], InferenceProgram)
    # the first figure's samples are its own calls: index n, 2n and 3n (1-based: n + 1, 2n + 1, 3n + 1)
    assert original[original.names()[0]].wall.samples == [n + 1, 2 * n + 1, 3 * n + 1]
    assert compressed.total.wall.samples == [2 * n - 1, 3 * n - 1, 4 * n - 1]
    assert compressed.program.wall.samples == [2 * n, 3 * n, 4 * n]


def test_timing_commands_let_idle_openmp_workers_sleep_unless_the_user_chose_a_policy(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert profile_module.sleep_idle_workers() == "passive"
    assert profile_module.os.environ["OMP_WAIT_POLICY"] == "passive"
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert profile_module.sleep_idle_workers() == "active"
    assert profile_module.os.environ["OMP_WAIT_POLICY"] == "active"


def test_table2_records_the_openmp_wait_policy_and_register_file_it_ran_under(monkeypatch, tmp_path):
    import json
    from tuckerref.cli import main
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["table2", "--input-shape", *map(str, SHAPE), "--repeats", "1", "--warmup", "0", "--threads", "1",
                 "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "table2.json").read_text())
    assert record["omp_wait_policy"] == "passive"
    from tuckerref.kernels import simd
    assert record["register_file"] == {"vector_registers": simd.VECTOR_REGISTERS,
                                       "widest_vector_bytes": simd.VECTOR_BYTES}


def test_table2_times_a_batch_of_clips_when_asked(tmp_path):
    import json
    from tuckerref.cli import main
    assert main(["table2", "--input-shape", *map(str, SHAPE), "--batch", "2", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "table2.json").read_text())
    assert table["batch"] == 2 and table["profiles"]["original"]["input_shape"][0] == 2


@pytest.mark.parametrize("batch", ["0", "-3"])
def test_table2_rejects_a_batch_below_one_naming_it(batch, tmp_path, capsys):
    from tuckerref.cli import main
    assert main(["table2", "--input-shape", *map(str, SHAPE), "--batch", batch, "--out", str(tmp_path)]) != 0
    assert f"--batch must be a positive integer, got {batch}" in capsys.readouterr().err
    assert not (tmp_path / "table2.json").exists()


def test_table2_total_speedup_per_round_is_each_rounds_original_over_compressed_time(nets):
    """Round robin pairs round k of both networks: the spread is that of t_orig[k] / t_comp[k]."""
    from tuckerref.commands.table2 import build_table, render, round_ratios
    net, comp, x = nets
    table = build_table(net, comp, x, profile_network, repeats=3, warmup=0, threads=1)
    spread = table["total"]["improvement"]["observed_speedup_rounds"]
    totals = table["profiles"]
    ratios = np.array(totals["original"]["total"]["wall"]["samples"]) / totals["compressed"]["total"]["wall"]["samples"]
    assert spread["rounds"] == 3 and spread["median"] == pytest.approx(np.median(ratios))
    assert spread["min"] == pytest.approx(ratios.min()) and spread["max"] == pytest.approx(ratios.max())
    assert spread["min"] <= spread["q1"] <= spread["median"] <= spread["q3"] <= spread["max"]
    assert "round by round" in render(table)
    assert round_ratios([4.0, 6.0, 9.0], [2.0, 2.0, 3.0]) == {"median": 3.0, "q1": 2.5, "q3": 3.0, "min": 2.0,
                                                              "max": 3.0, "rounds": 3}


def test_table2_gives_no_round_spread_for_a_backend_that_times_one_network_after_the_other(nets):
    from tuckerref.commands.table2 import build_table, render

    def one_after_the_other(net, x, **kwargs):
        return profile_network(net, x, **kwargs)
    net, comp, x = nets
    table = build_table(net, comp, x, one_after_the_other, repeats=1, warmup=0, threads=1)
    assert "observed_speedup_rounds" not in table["total"]["improvement"]
    assert "round by round" not in render(table)


def test_scaling_records_the_register_file_its_kernels_chose_tiles_for(tmp_path):
    import json
    from tuckerref.cli import main
    from tuckerref.kernels import simd
    assert main(["scaling", "--layer", "c2", "--ranks", "1,2", "--input-shape", *map(str, SHAPE), "--repeats", "1",
                 "--warmup", "0", "--threads", "1", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "scaling.json").read_text())
    assert record["register_file"] == {"vector_registers": simd.VECTOR_REGISTERS,
                                       "widest_vector_bytes": simd.VECTOR_BYTES}
    assert len(record["rows"]) == 4

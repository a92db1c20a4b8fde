"""Counting the exported C under Valgrind (tuckerref.export.counters, ``--counter``).

Counts are a property of the program and its input, not of the machine's load: two runs of the
same clip give identical counts. A tiny network with one Tucker-2 block (eqs. (8)-(10)) keeps
Callgrind's slowdown cheap. The tests that run Valgrind skip where it is absent; the refusal
without it is checked everywhere.
"""
import shutil
from collections import OrderedDict

import numpy as np
import pytest

from tuckerref.commands.scaling import tucker2_stand_in
from tuckerref.export import counters
from tuckerref.nn import Conv3d, ReLU, Sequential

VALGRIND = shutil.which("valgrind") and shutil.which("callgrind_annotate") and shutil.which("cc")
needs_valgrind = pytest.mark.skipif(not VALGRIND, reason="valgrind / callgrind_annotate / cc not found")
CLIP = (2, 4, 12, 16)


def tiny_tucker_net():
    """A 1x1x1 + 3x3x3 + 1x1x1 Tucker-2 block named c1 (paths c1.0, c1.1, c1.2), a ReLU and a convolution c2."""
    rng = np.random.default_rng(0)
    return Sequential(OrderedDict(c1=tucker2_stand_in(2, 4, (3, 3, 3), 1, 2, padding=1, rng=rng), relu=ReLU(),
                                  c2=Conv3d(4, 3, (1, 3, 3), rng=rng))).eval()


@needs_valgrind
def test_counts_are_identical_over_two_runs_and_fit_flops():
    net = tiny_tucker_net()
    clip = np.random.default_rng(1).standard_normal(CLIP).astype(np.float32)
    first = counters.count_layers(net, clip, "cache")
    second = counters.count_layers(net, clip, "cache")
    assert first == second
    assert list(first) == ["c1.0", "c1.1", "c1.2", "c2"]
    for row in first.values():
        assert row["instructions"] > 0 and row["data_reads"] > 0 and row["data_writes"] > 0
        assert row["ll_misses"] >= 0
    fit = counters.fit_counts([r["flops"] for r in first.values()], [r["instructions"] for r in first.values()])
    assert 0.0 <= fit["r2"] <= 1.0 and fit["per_flop"] > 0
    [(block, ratios)] = counters.misses_per_flop(first)
    assert block == "c1" and set(ratios) == {"c1.0", "c1.1", "c1.2"}


@needs_valgrind
def test_scaling_counter_instructions_prints_r2_and_writes_counts(tmp_path, capsys):
    from tuckerref.cli import main
    out = tmp_path / "scaling"
    rc = main(["scaling", "--backend", "c", "--counter", "instructions", "--layer", "c1", "--ranks", "1,2",
               "--input-shape", "2", "10", "32", "32", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "instructions = " in text and "R^2 = " in text
    assert (out / "scaling_counts.csv").exists() and (out / "scaling_counts.json").exists()
    lines = (out / "scaling_counts.csv").read_text().splitlines()
    assert len(lines) == 1 + 4  # header and the rank pairs (1,1), (1,2), (2,1), (2,2)


def test_counter_without_valgrind_is_refused_naming_the_option(monkeypatch):
    monkeypatch.setattr(counters.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match=r"--counter cache .*valgrind"):
        counters.check_counter("cache")
    with pytest.raises(ValueError, match="--counter must be one of"):
        counters.check_counter("cycles")


def test_counter_needs_the_c_backend(tmp_path, capsys):
    from tuckerref.cli import main
    rc = main(["scaling", "--counter", "instructions", "--input-shape", "2", "10", "32", "32", "--out",
               str(tmp_path / "out")])
    assert rc == 2
    assert "--counter instructions counts the exported C: it needs --backend c" in capsys.readouterr().err


def test_r_squared_of_an_exact_line_is_one():
    x = np.array([1.0, 2.0, 5.0, 9.0])
    assert counters.r_squared(x, 3 * x + 2) == pytest.approx(1.0)
    assert counters.fit_counts(x, 3 * x)["r2_origin"] == pytest.approx(1.0)

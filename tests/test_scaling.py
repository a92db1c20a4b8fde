"""``tuckerref scaling``: the least-squares fit time = a + b * FLOPs and how the sweep times its points."""
import numpy as np
import pytest

from tuckerref.commands.scaling import fit_time_vs_flops, sweep
from tuckerref.models import thetis_net
from tuckerref.nn import is_grad_enabled
from tuckerref.profile import Stats

SMALL_INPUT = (4, 12, 32, 48)


def test_fit_recovers_overhead_and_throughput_of_an_exact_line():
    flops = [1e9, 2e9, 5e9, 9e9]
    fit = fit_time_vs_flops(flops, [0.002 + f / 100e9 for f in flops])
    assert fit["a_s"] == pytest.approx(0.002) and fit["gflops"] == pytest.approx(100.0)
    assert fit["r2"] == pytest.approx(1.0)


def test_fit_r2_is_one_minus_residual_over_total_sum_of_squares():
    flops, seconds = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 5.0])
    fit = fit_time_vs_flops(flops, seconds)
    b, a = np.polyfit(flops, seconds, 1)
    residual = np.sum((seconds - (a + b * flops)) ** 2)
    assert fit["r2"] == pytest.approx(1 - residual / np.sum((seconds - seconds.mean()) ** 2))


def test_sweep_warms_every_point_then_times_them_round_robin_without_gradients():
    """Warm-up calls first, then ``repeats`` rounds of one timed call per point, all under no_grad."""
    net = thetis_net(SMALL_INPUT, seed=0).eval()
    x = np.random.default_rng(0).random((1,) + SMALL_INPUT, dtype=np.float32)
    calls = []

    def timer(module, inp, repeats, warmup):
        calls.append((id(module), repeats, warmup, is_grad_enabled()))
        return Stats([0.001 * (len(calls))]), Stats([0.002])

    rows = sweep(net, "c2", x, [1, 2], repeats=3, warmup=2, timer=timer)
    n = len(rows)
    assert n == 4 and not any(grad for *_, grad in calls)
    warm, timed = calls[:n], calls[n:]
    assert [(r, w) for _, r, w, _ in warm] == [(1, 2)] * n
    order = [m for m, *_ in warm]
    assert [m for m, *_ in timed] == order * 3 and all((r, w) == (1, 0) for _, r, w, _ in timed)
    # each row's samples are its own calls' results: point i is timed at calls n + i, 2n + i, 3n + i
    for i, row in enumerate(rows):
        assert row["wall_median_s"] == pytest.approx(0.001 * (2 * n + i + 1))

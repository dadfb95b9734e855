"""The LSTM's fallback to one thread when the hidden-unit split stalls (cores shared
with other busy processes)."""
import numpy as np

import fastlstm
from fastlstm import _schedule
from fastlstm._schedule import StallGuard, plan_for


def test_recurring_stalls_start_a_backoff_that_doubles_and_resets():
    g = StallGuard()
    key = ("forward", 25, 1, 65, 100, "f", 2)
    g.record(key, 2e-4, now=0.0)
    g.record(key, 5e-4, now=0.1)                 # slower, but not a stall
    assert not g.backing_off(now=0.2) and g.stalls == 0
    g.record(key, 1e-3, now=0.3)                 # 5x the best, but under 2 ms: noise
    assert not g.backing_off(now=0.3)
    g.record(key, 0.1, now=1.0)                  # 500x the best: a stall, but a lone one
    assert g.stalls == 1 and not g.backing_off(now=1.0)
    g.record(key, 0.1, now=2.0)                  # it recurs within the window: back off
    assert g.backing_off(now=2.0 + 0.49) and not g.backing_off(now=2.0 + 0.51)
    g.record(key, 0.1, now=3.0)                  # and again: twice as long
    assert g.backing_off(now=3.0 + 0.99) and not g.backing_off(now=3.0 + 1.01)
    assert g.stalls == 3
    g.record(key, 2.5e-4, now=5.0)               # full speed again: back to the start
    assert g.backoff_s == g.FIRST_BACKOFF_S
    g.record(key, 0.1, now=20.0)                 # a lone stall long after the last one
    assert not g.backing_off(now=20.0)
    for _ in range(20):
        g.record(key, 1.0, now=10.0)
    assert g.backoff_s == g.MAX_BACKOFF_S


def test_backing_off_runs_the_unit_split_on_one_thread_with_the_same_results(monkeypatch):
    guard = StallGuard()
    monkeypatch.setattr(_schedule, "stall_guard", guard)
    assert plan_for(1, 128, 2).split_units
    rng = np.random.default_rng(0)
    T, B, D, H = 6, 1, 5, 128
    x = rng.standard_normal((T, B, D))
    W_x, W_h = rng.standard_normal((D, 4 * H)) * 0.1, rng.standard_normal((H, 4 * H)) * 0.1
    b = np.zeros(4 * H)
    hs2, _, cache = fastlstm.lstm_forward(x, W_x, W_h, b, num_threads=2)
    g2 = fastlstm.lstm_backward(np.ones_like(hs2), cache)
    assert plan_for(1, H, 2).n_threads == 2
    guard.until = float("inf")                   # as after a stall
    assert plan_for(1, H, 2).n_threads == 1
    assert plan_for(64, H, 2).n_threads == 2    # batch splits have no barriers
    hs1, _, cache = fastlstm.lstm_forward(x, W_x, W_h, b, num_threads=2)
    g1 = fastlstm.lstm_backward(np.ones_like(hs1), cache)
    np.testing.assert_allclose(hs1, hs2, rtol=1e-12, atol=1e-14)
    for a, c in zip(g1, g2):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)


def test_unit_split_calls_are_recorded(monkeypatch):
    guard = StallGuard()
    monkeypatch.setattr(_schedule, "stall_guard", guard)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 1, 4)).astype(np.float32)
    W_x = rng.standard_normal((4, 512)).astype(np.float32)
    W_h = rng.standard_normal((128, 512)).astype(np.float32)
    hs, _, cache = fastlstm.lstm_forward(x, W_x, W_h, np.zeros(512, np.float32),
                                         num_threads=2)
    fastlstm.lstm_backward(hs, cache)
    kinds = sorted(k[0] for k in guard.best)
    assert kinds == ["backward", "forward"]

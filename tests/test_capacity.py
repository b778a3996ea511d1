"""Issue 20: the queueing model behind docs/capacity.md (benchmarks/capacity.py) against closed forms."""

from __future__ import annotations

import math

import pytest

from benchmarks.capacity import erlang_c, percentile_s, replicas_needed, response_survival


def test_erlang_c_known_values() -> None:
    assert erlang_c(1, 0.7) == pytest.approx(0.7)  # M/M/1: an arrival waits with probability rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # a^2/2! * 2/(2-a) = 1; 1 / (1 + 1 + 1)
    assert erlang_c(10, 9.5) > erlang_c(10, 5.0) > 0


def test_mm1_response_percentile_is_the_closed_form() -> None:
    """M/M/1: the response time is exponential of rate mu - lam, so p99 = ln(100) / (mu - lam)."""
    for lam, mu in ((1.0, 10.0), (8.0, 10.0), (12.0, 12.8)):
        assert percentile_s(0.99, lam, mu, 1) == pytest.approx(math.log(100) / (mu - lam), rel=1e-6)
    assert response_survival(0.0, 5.0, 10.0, 3) == pytest.approx(1.0)


def test_replicas_grow_with_the_rate_and_meet_the_target() -> None:
    mu = 12.8
    counts = [replicas_needed(lam, mu) for lam in (1, 10, 20, 40, 80, 160)]
    assert counts == sorted(counts) and counts[0] == 1
    for lam, c in zip((1, 10, 20, 40, 80, 160), counts, strict=True):
        assert percentile_s(0.99, lam, mu, c) <= 2.0
        assert c == 1 or percentile_s(0.99, lam, mu, c - 1) > 2.0  # the fewest
    assert percentile_s(0.99, 30.0, 10.0, 3) == math.inf  # at or past capacity
    with pytest.raises(ValueError):
        replicas_needed(1.0, 1.0)  # one photo's own p99 (4.6 s) already misses 2 s


def test_simulation_agrees_with_the_closed_form_for_exponential_service() -> None:
    import random

    from benchmarks.capacity import simulate_p99

    rng = random.Random(1)
    exponential = [rng.expovariate(10.0) for _ in range(50_000)]
    for lam, c in ((8.0, 1), (16.0, 2), (35.0, 4)):
        assert simulate_p99(lam, exponential, c, n=100_000) == pytest.approx(percentile_s(0.99, lam, 10.0, c), rel=0.1)
    # nearly constant service times queue far less than exponential ones at the same mean
    assert simulate_p99(8.0, [0.1], 1, n=100_000) < 0.6 * percentile_s(0.99, 8.0, 10.0, 1)

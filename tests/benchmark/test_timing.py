"""ldm/benchmark/timing.py: warm-up runs untimed, cases alternating within rounds, medians."""

from __future__ import annotations

import pytest

from ldm.benchmark import timing


def test_cases_alternate_within_rounds_after_untimed_warmup(squares_clock):
    clock = squares_clock(timing)
    order: list[str] = []
    cases = {"ours": lambda: order.append("ours"), "theirs": lambda: order.append("theirs")}
    seconds = timing.time_rounds(cases, rounds=3, warmup=2)
    assert order == ["ours", "theirs"] * 5  # 2 warm-up rounds, then 3 timed ones
    # Only the timed runs read the clock, before and after: run k of all timed runs takes 4k + 1 s.
    assert clock.calls == 2 * 6
    assert seconds == {"ours": [1, 9, 17], "theirs": [5, 13, 21]}
    assert timing.median(seconds["ours"]) == 9 and timing.median([1, 5, 9, 13]) == 7


@pytest.mark.parametrize("rounds, warmup", [(0, 1), (1, -1)])
def test_rounds_and_warmup_are_checked(rounds, warmup):
    with pytest.raises(ValueError, match="rounds must be at least 1 and warmup at least 0"):
        timing.time_rounds({"a": lambda: None}, rounds=rounds, warmup=warmup)

"""One watchdog thread for every stream deadline: due callbacks run once, in order; cancelled ones never."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.serve.deadlines import DeadlineWatch


@pytest.fixture()
def watch():
    w = DeadlineWatch()
    yield w
    w.close()


@settings(max_examples=15, deadline=None)
@given(delays=st.lists(st.integers(0, 40), min_size=1, max_size=12), cancel=st.data())
def test_due_callbacks_run_once_in_deadline_order_and_cancelled_never(delays, cancel):
    watch = DeadlineWatch()
    try:
        fired, done = [], threading.Event()
        handles = [watch.arm(d / 1000, lambda i=i: fired.append(i)) for i, d in enumerate(delays)]
        chosen = cancel.draw(st.sets(st.sampled_from(range(len(delays)))))
        # on a loaded machine a short deadline may fire before its cancel(): then cancel() says so (True), and the
        # callback ran; a cancel() that returns False must have kept it from ever running
        dropped = {i for i in chosen if not handles[i].cancel()}
        watch.arm(0.08, done.set)  # after every other deadline
        assert done.wait(5)
        expected = [i for i in sorted(range(len(delays)), key=lambda i: (delays[i], i)) if i not in dropped]
        # each due deadline fires exactly once (the order is tested below with margins a loaded machine keeps)
        assert sorted(fired) == sorted(expected) and len(fired) == len(set(fired))
        assert watch.pending() == 0
    finally:
        watch.close()


def test_an_earlier_deadline_fires_first_whatever_the_arming_order(watch):
    fired, done = [], threading.Event()
    watch.arm(0.4, lambda: (fired.append("late"), done.set()))
    watch.arm(0.05, lambda: fired.append("early"))
    assert done.wait(5) and fired == ["early", "late"]


def test_a_thousand_open_streams_share_one_thread(watch):
    before = threading.active_count()
    handles = [watch.arm(30, lambda: None) for _ in range(1000)]
    assert threading.active_count() == before and watch.pending() == 1000
    for h in handles:
        h.cancel()
    assert watch.pending() == 0


def test_a_failing_callback_does_not_stop_later_deadlines(watch):
    ran = threading.Event()
    watch.arm(0.0, lambda: 1 / 0)
    watch.arm(0.01, ran.set)
    assert ran.wait(5)


def test_closed_watch_refuses_and_its_thread_ends():
    watch = DeadlineWatch()
    watch.close()
    assert not watch._thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        watch.arm(1, lambda: None)


def test_cancel_says_whether_the_deadline_already_fired(watch):
    """The decision to fire and cancel() are atomic: a cancel that lands as the callback starts reports it, so
    the server drops that observation (the client was cancelled) instead of using it."""
    started, release = threading.Event(), threading.Event()

    def slow_cancel():
        started.set()
        release.wait(5)

    late = watch.arm(0.0, slow_cancel)
    assert started.wait(5)
    assert late.cancel() is True  # fired: the callback is running
    release.set()
    early = watch.arm(30, lambda: None)
    assert early.cancel() is False and early.cancel() is False

# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The node's two-stage frame pipeline without ROS (issue 34): the first stage prepares frame n+1 while the
second works on frame n, frames stay in order, nothing prepared is thrown away, a failing stage never ends
it, and each stage takes its share of the free cores."""
import threading

import pytest

from dhe_vpr_ros.runtime.pipeline import Handoff, Pipeline
from dhe_vpr_ros.runtime.threads import share_of


def feeder(items):
    items = list(items)
    lock = threading.Lock()

    def take():
        with lock:
            return items.pop(0) if items else None
    return take


def test_the_first_stage_prepares_the_next_frame_while_the_second_works():
    started_second = threading.Event()
    overlapped = []
    done = []

    def first(n):
        if n == 1:
            started_second.set()  # frame 1 is being prepared
        return n

    def second(n):
        if n == 0:  # frame 0 waits here until frame 1's preparation started: only possible if they overlap
            overlapped.append(started_second.wait(10))
        done.append(n)

    pipe = Pipeline(feeder(range(5)), first, second, lambda *a: pytest.fail(f"stage failed: {a}"))
    pipe.start()
    pipe.join(20)
    assert overlapped == [True]
    assert done == [0, 1, 2, 3, 4]


def test_nothing_prepared_is_lost_and_order_is_kept_when_the_second_stage_is_slower():
    gate = threading.Semaphore(0)
    prepared, done = [], []

    def first(n):
        prepared.append(n)
        return n

    def second(n):
        gate.acquire(timeout=10)
        done.append(n)

    pipe = Pipeline(feeder(range(6)), first, second, lambda *a: None)
    pipe.start()
    for _ in range(6):
        gate.release()
    pipe.join(20)
    assert done == prepared == list(range(6))


def test_a_stage_that_raises_is_reported_and_the_pipeline_goes_on():
    errors, done = [], []

    def first(n):
        if n == 1:
            raise ValueError("bad frame")
        return None if n == 2 else n  # None: nothing for the second stage

    def second(n):
        if n == 3:
            raise RuntimeError("rank failed")
        done.append(n)

    pipe = Pipeline(feeder(range(5)), first, second, lambda stage, item, exc: errors.append((stage, item, str(exc))))
    pipe.start()
    pipe.join(20)
    assert done == [0, 4]
    assert errors == [("first", 1, "bad frame"), ("second", 3, "rank failed")]


def test_a_closed_handoff_releases_a_waiting_producer_and_drains():
    handoff = Handoff()
    assert handoff.put(1)
    result = []
    producer = threading.Thread(target=lambda: result.append(handoff.put(2)))
    producer.start()
    handoff.close()
    producer.join(10)
    assert result == [False]
    assert handoff.take() == 1 and handoff.take() is None


@pytest.mark.parametrize("count,shares", [(1, (1, 1)), (2, (1, 1)), (3, (2, 1)), (4, (2, 2))])
def test_two_stages_split_the_free_cores(count, shares):
    assert (share_of(count, (0, 2)), share_of(count, (1, 2))) == shares
    assert share_of(count, (0, 1)) == count


def test_a_lone_frame_gets_every_core_in_both_stages_and_busy_stages_share_them():
    """threads 4 (fixed, as a user's count): a frame that arrives alone runs each stage on all 4; while the
    second stage works on one frame and the first prepares the next, they split the cores 2 + 2."""
    import torch
    seen = {"first": [], "second": []}
    release_second = threading.Event()
    items, lock, arrived = [], threading.Lock(), threading.Event()

    def take():
        arrived.wait(10)
        with lock:
            arrived.clear() if len(items) <= 1 else None
            return items.pop(0) if items else None

    def first(n):
        seen["first"].append((n, torch.get_num_threads()))
        return n

    def second(n):
        seen["second"].append((n, torch.get_num_threads()))
        if n == 1:
            release_second.wait(10)  # frame 2 is prepared meanwhile

    def waiting():
        with lock:
            return bool(items)

    def send(*ns):
        with lock:
            items.extend(ns)
        arrived.set()

    pipe = Pipeline(take, first, second, lambda *a: pytest.fail(f"stage failed: {a}"), threads=4, waiting=waiting)
    pipe.start()
    send(0)  # alone: both stages take all four
    _wait_until(lambda: len(seen["second"]) == 1 and not pipe._handoff.occupied())
    send(1, 2)  # frame 1 alone in the first stage; frame 2 waits while the second stage starts on 1
    _wait_until(lambda: len(seen["first"]) == 3)
    _wait_until(lambda: not pipe._preparing)  # frame 2 handed over, the first stage idle again
    release_second.set()
    _wait_until(lambda: len(seen["second"]) == 3)
    send(None)
    pipe.join(20)
    assert seen["first"][0] == (0, 4) and seen["second"][0] == (0, 4)
    assert seen["first"][1] == (1, 4)  # the second stage idle: frame 1 is prepared on all four
    assert seen["second"][1] == (1, 2)  # frame 2 was waiting: the first stage is about to work beside it
    assert seen["first"][2] == (2, 2)  # prepared while the second stage works on frame 1
    assert seen["second"][2] == (2, 4)  # the first stage idle, nothing waiting: frame 2 finishes on all four


def _wait_until(condition, timeout: float = 10.0) -> None:
    import time
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)

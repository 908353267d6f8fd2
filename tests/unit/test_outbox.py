"""The outbox thread: responses in order, cancelled clients noticed, never a poll after a final."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from moe_engine.python_backend.outbox import Outbox
from tests.support import wait_for
from tests.unit.triton_sender import FINAL, RecordingSender

POLL_S = 0.001


class CancelLog:
    """The engine's `cancel`, as the outbox calls it."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, request_id: str) -> bool:
        with self._lock:
            self.ids.append(request_id)
        return True


@pytest.fixture
def cancels() -> CancelLog:
    return CancelLog()


@pytest.fixture
def outbox(cancels: CancelLog) -> Iterator[Outbox]:
    box = Outbox(cancels, final_flag=FINAL, poll_interval_s=POLL_S, poll_batch=4)
    yield box
    box.close()


def test_responses_go_out_in_the_order_they_were_queued(outbox: Outbox) -> None:
    sender = RecordingSender()
    queued = outbox.watch("a", sender)
    for i in range(50):
        queued.send(("tensors", {"i": i}), 0)
    queued.send(None, FINAL)
    assert sender.finished.wait(10)
    assert [r for r, _ in sender.responses] == [("tensors", {"i": i}) for i in range(50)] + [None]


def test_a_request_is_never_polled_after_its_final_response(outbox: Outbox) -> None:
    senders = [RecordingSender(str(i)) for i in range(20)]
    queued = [outbox.watch(str(i), s) for i, s in enumerate(senders)]
    assert wait_for(lambda: all(s.polls > 0 for s in senders), timeout=10)
    for q in queued:
        q.send(("tensors", {}), 0)
        q.send(None, FINAL)
    assert all(s.finished.wait(10) for s in senders)
    # Many poll periods later: a poll after a final would have crashed the server.
    later = RecordingSender("later")
    outbox.watch("later", later)
    assert wait_for(lambda: later.polls >= 20, timeout=10)
    assert [v for s in senders for v in s.violations] == []
    for sender in senders:
        # Polls may come between a response and the final one, never after the final.
        kind, _, flags = sender.events[-1]
        assert kind == "send" and flags & FINAL


def test_a_cancelled_client_is_cancelled_in_the_engine(outbox: Outbox, cancels: CancelLog) -> None:
    gone, staying = RecordingSender(), RecordingSender()
    outbox.watch("gone", gone)
    outbox.watch("staying", staying)
    gone.cancelled = True
    assert wait_for(lambda: "gone" in cancels.ids, timeout=10)
    assert wait_for(lambda: staying.polls > 3, timeout=10)
    assert "staying" not in cancels.ids


def test_a_failing_is_cancelled_counts_as_cancelled(outbox: Outbox, cancels: CancelLog) -> None:
    class Broken(RecordingSender):
        def is_cancelled(self) -> bool:
            raise RuntimeError("factory gone")

    outbox.watch("broken", Broken())
    assert wait_for(lambda: "broken" in cancels.ids, timeout=10)


def test_one_bad_request_does_not_stop_the_outbox(outbox: Outbox) -> None:
    bad, good = RecordingSender("bad", fail_sends=True), RecordingSender("good")
    bad_queue = outbox.watch("bad", bad)
    good_queue = outbox.watch("good", good)
    bad_queue.send(("tensors", {}), 0)
    bad_queue.send(None, FINAL)
    good_queue.send(("tensors", {"n": 1}), 0)
    good_queue.send(None, FINAL)
    assert good.finished.wait(10)
    assert good.responses == [(("tensors", {"n": 1}), 0), (None, FINAL)]


def test_every_watched_request_gets_its_turn_when_more_than_a_batch_are_watched(
    outbox: Outbox,
) -> None:
    senders = [RecordingSender(str(i)) for i in range(40)]  # ten batches of four
    for i, sender in enumerate(senders):
        outbox.watch(str(i), sender)
    assert wait_for(lambda: all(s.polls >= 2 for s in senders), timeout=3)


def test_close_sends_what_is_still_queued(cancels: CancelLog) -> None:
    box = Outbox(cancels, final_flag=FINAL, poll_interval_s=10)
    sender = RecordingSender()
    queued = box.watch("a", sender)
    for _ in range(100):
        queued.send(("tensors", {}), 0)
    queued.send(None, FINAL)
    assert box.close(timeout=5)
    assert len(sender.responses) == 101 and sender.responses[-1] == (None, FINAL)

from __future__ import annotations

from llmos.worker.cancels import CancelBook


def test_a_cancel_stops_a_request_in_flight_or_waits_for_it_bounded() -> None:
    book = CancelBook(remembered=2)
    event = book.track("a")
    assert book and not event.is_set()
    book.cancel("a")
    assert event.is_set()
    book.release("a")
    assert not book
    for early in ("x", "y", "z"):  # cancels that came first; the oldest is forgotten
        book.cancel(early)
    assert not book.cancelled_before("x")
    assert book.cancelled_before("y") and not book.cancelled_before("y")
    b, c = book.track("b"), book.track("c")
    book.cancel_all()
    assert b.is_set() and c.is_set()

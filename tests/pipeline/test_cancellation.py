"""pipeline.cancellation: a token cancelled with a reason, checked and waited on by the run;
`note` cancels it without a lock, from a handler running wherever its thread was."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from wsi_segment.errors import SlideInterrupted, SlideTimedOut
from wsi_segment.pipeline.cancellation import NEVER_CANCELLED, Cancellation


def test_the_first_reason_stays_and_check_raises_it() -> None:
    token = Cancellation()
    token.check()  # not cancelled: nothing
    assert token.cancel(SlideTimedOut) and not token.cancel(SlideInterrupted)
    token.note(SlideInterrupted)  # a later note changes nothing either
    assert token.reason is SlideTimedOut and token.wait(0.0)
    with pytest.raises(SlideTimedOut):
        token.check()
    assert NEVER_CANCELLED.wait(0.0) is False and not NEVER_CANCELLED.cancelled


def test_a_note_is_seen_by_checks_and_by_a_wait_at_its_timeout() -> None:
    token = Cancellation()
    token.note(SlideInterrupted)
    assert token.cancelled and isinstance(token.stop(), SlideInterrupted)
    assert token.wait(0.05)  # no event was set (no lock taken): seen at the timeout
    assert not token.cancel(SlideTimedOut) and token.reason is SlideInterrupted


def test_a_signal_handler_notes_while_this_thread_waits_on_the_token() -> None:
    """A signal's handler notes the stop while the main thread waits on the token (where it
    may hold the token's event lock, which `cancel` would take again: why handlers note):
    the wait it interrupted reports the stop, though no event was set."""
    token = Cancellation()
    previous = signal.signal(signal.SIGUSR1, lambda _s, _f: token.note(SlideInterrupted))
    try:
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        assert token.wait(2.0)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert token.reason is SlideInterrupted

"""transforms.deadline: a blocking read on a peer that never answers is ended, and says so."""
from __future__ import annotations

import socket
import time

import pytest

from transforms.deadline import NoAnswer, answer_within


def test_a_read_from_a_silent_peer_ends_after_the_deadline() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        began = time.monotonic()
        with pytest.raises(NoAnswer) as caught:
            with answer_within(ours.fileno(), 0.3, 'the control connection'):
                data = ours.recv(10)  # the shut-down socket reads end of stream
                if not data:
                    raise ConnectionResetError('server closed the connection unexpectedly')
        waited = time.monotonic() - began
        assert 0.25 <= waited < 5
        assert str(caught.value) == 'the control connection: no answer from the server for 0.3 s'
        assert isinstance(caught.value.__cause__, ConnectionResetError)
        with pytest.raises(OSError):
            ours.sendall(b'x' * 1_000_000)  # the socket is shut down for good


def test_an_answer_in_time_leaves_the_connection_open() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b'pong')
        with answer_within(ours.fileno(), 0.3, 'the control connection'):
            assert ours.recv(10) == b'pong'
        time.sleep(0.5)  # past the deadline: the timer was cancelled
        theirs.sendall(b'again')
        assert ours.recv(10) == b'again'


def test_an_error_before_the_deadline_is_left_as_it_is() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with pytest.raises(KeyError):
            with answer_within(ours.fileno(), 5, 'x'):
                raise KeyError('not about the connection')


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match='seconds 0 must be > 0'):
        with answer_within(0, 0, 'x'):
            pass

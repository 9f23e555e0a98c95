"""transforms.deadline: a blocking read on a peer that never answers is ended, and says so."""
from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from transforms.deadline import NoAnswer, answer_within, stall_watch


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


def _wait_until(reached: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not reached():
        assert time.monotonic() < deadline, 'never reached'
        time.sleep(0.02)


def test_a_stalled_block_whose_check_passes_runs_on_and_is_checked_again() -> None:
    ours, theirs = socket.socketpair()
    waits: list[float] = []
    with ours, theirs:
        with stall_watch(ours.fileno, 0.2, waits.append, 'the batch'):
            # The server works (a lock wait): the check says it is there, three times.
            _wait_until(lambda: len(waits) >= 3)
            theirs.sendall(b'done')
            assert ours.recv(10) == b'done'
        assert waits == sorted(waits) and 0.15 <= waits[0] < 2
        count = len(waits)
        time.sleep(0.5)  # the block ended: no check after it (but one already under way)
        assert len(waits) <= count + 1
        theirs.sendall(b'again')
        assert ours.recv(10) == b'again'


def test_a_stalled_block_whose_check_fails_is_cut_and_says_why() -> None:
    ours, theirs = socket.socketpair()

    def check(waited: float) -> None:
        raise NoAnswer('nor did a check from a new connection within 2 s')

    with ours, theirs:
        began = time.monotonic()
        with pytest.raises(NoAnswer) as caught:
            with stall_watch(ours.fileno, 0.3, check, 'the target'):
                if not ours.recv(10):  # the shut-down socket reads end of stream
                    raise ConnectionResetError('server closed the connection unexpectedly')
        assert 0.25 <= time.monotonic() - began < 5
        assert str(caught.value) == ('the target: no answer for 0 s, nor did a check from a new '
                                     'connection within 2 s')
        assert isinstance(caught.value.__cause__, ConnectionResetError)


def test_a_stall_check_with_no_socket_yet_shuts_nothing_down() -> None:
    ours, theirs = socket.socketpair()
    checked = []

    def check(waited: float) -> None:
        checked.append(waited)
        raise NoAnswer('nobody home')

    with ours, theirs:
        with stall_watch(lambda: None, 0.1, check, 'the target'):
            _wait_until(lambda: len(checked) >= 2)
            theirs.sendall(b'late')
            assert ours.recv(10) == b'late'
        assert len(checked) >= 2  # it looked, had nothing to cut, and looked again


def test_the_stall_check_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match='every_s 0 must be > 0'):
        with stall_watch(lambda: None, 0, lambda waited: None, 'x'):
            pass

"""A TCP proxy in front of a real server that can break its connections at a chosen byte.

Killing a session on the server (``KILL``, ``pg_terminate_backend``) only lands where the
server looks at it, and a shutdown only between what it sends; the data already in the socket
buffers (megabytes) still arrives whole.  A network failure cuts a stream anywhere, inside a
transaction or a packet.  This proxy does that, reproducibly: ``cut_after(n)`` forwards ``n``
more bytes from the server to the clients (or, with ``to_server``, from the clients to the
server), then closes both sides of the connection that carried the last of them.
Connections opened later pass through untouched.

    proxy = CuttingProxy.start(server.port)
    dsn = f'mysql://root@127.0.0.1:{proxy.port}/db'
    proxy.cut_after(1_000_000)
    proxy.wait_for_cut(timeout=30)
    proxy.fail_over(replica.port)   # what a moved virtual IP does
    proxy.black_hole()              # the busiest connection stays open but carries nothing
    proxy.black_hole('first')       # the oldest one (a source's control connection)
    proxy.hold_new()                # connections opened from now wait (a slow network)…
    proxy.release_new()             # …until this
"""

from __future__ import annotations

import socket
import threading

from tests.services import ServiceError

__all__ = ["CuttingProxy"]

_CHUNK = 64 * 1024


class CuttingProxy:
    """Listens on a free loopback port and forwards each connection to ``target_port``."""

    def __init__(self, listener: socket.socket, target_port: int) -> None:
        self._listener = listener
        self.port: int = listener.getsockname()[1]
        self._target_port = target_port
        self._lock = threading.Lock()
        self._budget: int | None = None  # bytes still forwarded before the cut; None: no cut
        self._to_server = False  # the direction the budget counts
        self._cut = threading.Event()
        self.cuts = 0
        self._closed = False
        self._pairs: dict[tuple[socket.socket, socket.socket], int] = {}  # bytes from server
        self._holes: set[tuple[socket.socket, socket.socket]] = set()
        self._admit = threading.Event()  # clear: accepted connections wait to be forwarded
        self._admit.set()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    @classmethod
    def start(cls, target_port: int) -> CuttingProxy:
        listener = socket.create_server(("127.0.0.1", 0))
        return cls(listener, target_port)

    def cut_after(self, nbytes: int, *, to_server: bool = False) -> None:
        """Break the connection that carries the server's byte ``nbytes`` from now (the
        clients' byte, with ``to_server``)."""
        if nbytes <= 0:
            raise ValueError(f"nbytes {nbytes} must be positive")
        with self._lock:
            self._budget, self._to_server = nbytes, to_server
            self._cut.clear()

    @property
    def armed(self) -> bool:
        """A cut is asked for and has not happened yet."""
        return self._budget is not None

    def wait_for_cut(self, timeout: float) -> None:
        if not self._cut.wait(timeout):
            raise ServiceError(f"the proxy cut nothing within {timeout} s: too few bytes flowed")

    def fail_over(self, target_port: int) -> None:
        """New connections go to ``target_port``; the open ones are broken."""
        with self._lock:
            self._target_port = target_port
            pairs = list(self._pairs)
        for pair in pairs:
            _close(pair)

    def black_hole(self, which: str = "busiest") -> None:
        """From now on one connection delivers nothing either way, not even the server's
        closing it, and stays open until the client closes it: a hung peer, or a network that
        drops packets.  ``which``: of those not black-holed yet, the one that carried the most
        bytes from the server (``busiest``), or the oldest of those open (``first``)."""
        if which not in ("busiest", "first"):
            raise ValueError(f"which {which!r}: 'busiest' or 'first'")
        with self._lock:
            pairs = self._pairs
            if which == "first":
                chosen = next(iter(pairs), None)
            else:
                chosen = max((p for p in pairs if p not in self._holes),
                             key=pairs.__getitem__, default=None)
            if chosen is None:
                raise ServiceError("no connection to black-hole")
            self._holes.add(chosen)

    def hold_new(self) -> None:
        """Connections opened from now on are accepted but reach the server only after
        :meth:`release_new`; the open ones go on as they were."""
        self._admit.clear()

    def release_new(self) -> None:
        self._admit.set()

    def close(self) -> None:
        self._closed = True
        self._admit.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._admit.wait()
            try:
                server = socket.create_connection(("127.0.0.1", self._target_port))
            except OSError:
                client.close()  # the server is down: so is the connection through the proxy
                continue
            pair = (client, server)
            with self._lock:
                self._pairs[pair] = 0
            threading.Thread(target=self._pump, args=(client, server, pair, True),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False),
                             daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              pair: tuple[socket.socket, socket.socket], to_server: bool) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if pair in self._holes:
                    continue  # swallowed
                if not to_server:
                    self._pairs[pair] = self._pairs.get(pair, 0) + len(data)
                cut = False
                if self._budget is not None and self._to_server == to_server:
                    with self._lock:
                        if self._budget is not None and self._to_server == to_server:
                            if len(data) >= self._budget:
                                data, cut = data[:self._budget], True
                                self._budget = None
                            else:
                                self._budget -= len(data)
                sink.sendall(data)
                if cut:
                    self.cuts += 1
                    self._cut.set()
                    break
        except OSError:
            pass  # the other direction closed the pair
        with self._lock:
            if pair in self._holes and not to_server:
                return  # a black hole does not pass on that the server hung up either
            self._pairs.pop(pair, None)
            self._holes.discard(pair)
        _close(pair)


def _close(pair: tuple[socket.socket, socket.socket]) -> None:
    for sock in pair:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

"""A loopback TCP proxy a test can cut and restore: a database or server becoming unreachable
mid-run (``cut``: every connection reset, new ones refused) and coming back (``restore``).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from autoscaler.embedded._process import LOOPBACK


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``(target_host, target_port)`` until cut."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._up = True
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Reset every connection and refuse new ones (they are accepted and closed at once)."""
        with self._lock:
            self._up = False
            sockets, self._open = self._open, []
        for sock in sockets:
            # shutdown wakes the forwarding thread blocked in recv (a bare close would not, and the
            # peer would never hear of it); both ends see the connection end.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def restore(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._up = True

    def close(self) -> None:
        """Cut and stop listening."""
        self.cut()
        self._closed = True
        with contextlib.suppress(OSError):
            # shutdown wakes the thread blocked in accept (a bare close leaves it there until join's
            # timeout, five seconds per proxy).
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(timeout=5.0)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5.0)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv
                with contextlib.suppress(OSError):
                    sock.close()

"""A TCP forwarder from this network namespace into another one.

    python -m tests.node.forward --netns /run/netns/X --target 172.18.0.2:6443

listens on 127.0.0.1 (a free port, printed as ``PORT=<n>`` on stdout) in the namespace
it is started in, then enters ``--netns`` and relays every accepted connection to
``--target`` there. The test process reaches the control-plane node's apiserver this
way without any address or route in the machine's own network namespace.

The listening socket is made before setns(), so it stays in the starting namespace;
every socket made afterwards (the outgoing ones) is in the target namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence

CLONE_NEWNET = 0x40000000


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve(conn: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=10)
    except OSError:
        conn.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
    back.start()
    _pump(conn, upstream)
    back.join()
    conn.close()
    upstream.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node.forward")
    parser.add_argument("--netns", required=True, help="path of the target network namespace")
    parser.add_argument("--target", required=True, help="HOST:PORT inside that namespace")
    args = parser.parse_args(argv)
    # Stopped by its parent with SIGTERM; a Ctrl-C meant for the parent is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    _enter_netns(args.netns)  # this (main) thread, and every thread started from now on
    print(f"PORT={listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, target), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

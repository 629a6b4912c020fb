"""This node's own addresses, read from the kernel with pyroute2 and kept current.

Traffic from a pod's own node is always allowed (kubelet probes), so the compiler needs
the node's addresses. The Node object lists some; the kernel knows all of them (bridge
gateways included) and learns new ones before the API does.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable

from agent.model.objects import IPAddress

log = logging.getLogger(__name__)

# Loopback and link-local addresses never appear as a forwarded packet's node end.
_IGNORED = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("::1/128"),
    ipaddress.ip_network("fe80::/10"),
)


def _usable(address: IPAddress) -> bool:
    return not any(address in network for network in _IGNORED)


def read_kernel_addresses() -> tuple[IPAddress, ...]:
    """Every usable address configured in this network namespace, sorted."""
    from pyroute2 import IPRoute  # lazy: render and explain never need netlink

    found: set[IPAddress] = set()
    with IPRoute() as ipr:
        for message in ipr.get_addr():
            text = message.get_attr("IFA_ADDRESS") or message.get_attr("IFA_LOCAL")
            if not text:
                continue
            address = ipaddress.ip_address(text)
            if _usable(address):
                found.add(address)
    return tuple(sorted(found, key=lambda a: (a.version, int(a))))


def compare_with_node_object(
    kernel: Iterable[IPAddress], node_object: Iterable[IPAddress], node_name: str
) -> list[str]:
    """Warnings for Node addresses the kernel does not have (a misnamed node, usually)."""
    have = set(kernel)
    return [
        f"Node {node_name} lists address {address}, which is not configured on this host; "
        "is --node the right node?"
        for address in node_object
        if address not in have and _usable(address)
    ]


class AddressWatcher:
    """Calls ``on_change`` with the new address set whenever the kernel's changes.

    The netlink subscription is opened before the addresses are read again, as a watch
    follows its list: an address added between the first read and the subscription
    would otherwise never be seen. A periodic re-read covers notifications the kernel
    drops when the socket's buffer overflows (ENOBUFS).
    """

    def __init__(
        self,
        on_change: Callable[[tuple[IPAddress, ...]], None],
        resync_seconds: float = 30.0,
    ) -> None:
        self._on_change = on_change
        self._resync_seconds = resync_seconds
        self._stop = threading.Event()
        self._following = threading.Event()
        self._thread: threading.Thread | None = None
        self.addresses: tuple[IPAddress, ...] = read_kernel_addresses()

    def start(self) -> None:
        """Returns once subscribed and caught up with changes since the first read."""
        self._thread = threading.Thread(target=self._run, name="node-addresses", daemon=True)
        self._thread.start()
        self._following.wait(timeout=5)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _refresh(self) -> None:
        current = read_kernel_addresses()
        if current != self.addresses:
            log.info("node addresses changed: %s", ", ".join(map(str, current)) or "none")
            self.addresses = current
            self._on_change(current)

    def _run(self) -> None:
        # pyroute2 binds a socket to the thread that uses it: this thread owns it whole.
        from pyroute2 import IPRoute

        try:
            with IPRoute() as ipr:
                ipr.bind()  # address and link notifications from here on
                self._refresh()
                self._following.set()
                last_read = time.monotonic()
                while not self._stop.is_set():
                    ready, _, _ = select.select([ipr], [], [], 0.5)
                    if ready:
                        try:
                            ipr.get()  # drain; the address set is re-read below as a whole
                        except OSError as error:  # ENOBUFS: notifications were lost
                            log.warning("netlink notifications lost (%s); re-reading", error)
                    elif time.monotonic() - last_read < self._resync_seconds:
                        continue
                    self._refresh()
                    last_read = time.monotonic()
        except Exception:  # netlink trouble must not kill the agent: addresses stay as read
            log.exception("node address watcher stopped; addresses are no longer followed")
        finally:
            self._following.set()

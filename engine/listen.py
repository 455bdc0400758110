"""Where a job listens: a rendezvous store bound to the configured host only, and the list of
every listener that `adt check` and the start of every run print.

torch RPC meets at a c10d TCPStore on the PS. Given `tcp://HOST:PORT`, c10d's store server binds
to every interface (`::`, dual-stack) whatever HOST says, and the store is unauthenticated. So the
PS binds the listening socket itself, to HOST only, and hands it to the store (`master_listen_fd`);
the rendezvous scheme `adt-tcp://` does that inside `rpc.init_rpc`. TensorPipe (RPC) and Gloo
listen on the interface that TP_SOCKET_IFNAME / GLOO_SOCKET_IFNAME name: `pin_interface` sets them
to the interface holding HOST when HOST is an address of this machine.

Under torchrun (`adt launch`) the store is torchrun's own: node 0's agent serves it on every
interface at the master port, and every rank, the PS included, is only its client.

Either way each rank but 0 leaves an `adt/arrived/<rank>` key in the store, so that rank 0 can
name the workers that never came when the group does not form within --join-timeout; and rank 0
publishes the job's config there (`share_config`), which each worker reads before RPC forms: its
TensorPipe device map must be set by then, and a worker on another machine has no run dir.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

import psutil

SCHEME = "adt-tcp"
_registered = False


def is_loopback(host: str) -> bool:
    """True for a name or address that stays on this machine (127.0.0.0/8, ::1, localhost)."""
    return host in ("localhost", "::1") or host.startswith("127.")


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket listening on `host:port` only (port 0: one the OS picks)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # As c10d does: a port left in TIME_WAIT by an earlier run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    return sock


def _torchrun_serves(host: str, port: int) -> bool:
    # torchrun promises its agent's store only at its own MASTER_ADDR:MASTER_PORT (as c10d checks).
    env = os.environ
    return (env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
            and env.get("MASTER_ADDR") == host and env.get("MASTER_PORT") == str(port))


def _rendezvous(url: str, **_: object) -> Iterator:
    """The `adt-tcp://HOST:PORT?join_timeout=S&rank=R&world_size=N` handler: rank 0 serves, the
    others connect; then every rank but 0 says it arrived, and rank 0 waits for all of them."""
    from torch.distributed import TCPStore

    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query))
    rank, world_size = int(query["rank"]), int(query["world_size"])
    join_timeout = float(query.get("join_timeout", 1800))
    host, port = parsed.hostname or "", parsed.port or 0
    if rank == 0 and not _torchrun_serves(host, port):
        listener = bind_listener(host, port)
        bound, bound_port = listener.getsockname()[:2]
        # The store owns the descriptor from here on (it closes it at shutdown). It does not wait
        # for the workers itself: _arrive does, in Python, and knows who is missing.
        store = TCPStore(host, bound_port, world_size, True, timedelta(seconds=join_timeout),
                         master_listen_fd=listener.detach(), wait_for_workers=False)
        print(f"[adt rendezvous] store listens on {_show(bound)}:{bound_port} only", flush=True)
    else:  # retries until the store is up, for at most join_timeout
        store = TCPStore(host, port, world_size, False, timedelta(seconds=join_timeout))
    if rank == 0 and _shared.publish:  # before waiting: the workers wait for it in turn
        store.set(CONFIG_KEY, _shared.publish)
    _arrive(store, rank, world_size, join_timeout)
    if rank and _shared.receive is not None:  # waits (up to join_timeout) until rank 0 published
        _shared.receive(store.get(CONFIG_KEY).decode())
    yield store, rank, world_size
    raise RuntimeError(f"{SCHEME}:// cannot rendezvous twice: RPC's group is fixed at start")


CONFIG_KEY = "adt/config"


@dataclass
class _Shared:
    publish: str = ""  # rank 0: the job's config as JSON
    receive: Callable[[str], None] | None = None  # ranks > 0: given that JSON before RPC forms


_shared = _Shared()


def share_config(publish: str = "", receive: Callable[[str], None] | None = None) -> None:
    """What this process's rendezvous does with the job's config: rank 0 publishes it, the others
    receive it (before torch builds the RPC agent, so that `receive` can still set device maps)."""
    _shared.publish, _shared.receive = publish, receive


# Who reached the rendezvous, for the message when the group does not form in time.
arrived: set[int] = set()  # rank 0: the worker ranks that reached the store; others: their own


def _arrive(store: Any, rank: int, world_size: int, join_timeout: float) -> None:
    keys = {r: f"adt/arrived/{r}" for r in range(1, world_size)}
    if rank:
        store.set(keys[rank], str(os.getpid()))
        arrived.add(rank)
        return
    deadline = time.monotonic() + join_timeout
    while len(arrived) < len(keys):
        arrived.update(r for r, key in keys.items() if store.check([key]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"ranks {sorted(set(keys) - arrived)} never reached the rendezvous")
        time.sleep(0.1)


def rendezvous_url(host: str, port: int, join_timeout: float) -> str:
    """The init_method for `rpc.init_rpc` whose store listens on `host` only and whose ranks wait
    at most `join_timeout` seconds for each other."""
    global _registered
    if not _registered:
        from torch.distributed import register_rendezvous_handler

        register_rendezvous_handler(SCHEME, _rendezvous)
        _registered = True
    return f"{SCHEME}://{_show(host)}:{port}?join_timeout={float(join_timeout)!r}"


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def interface_of(host: str) -> str | None:
    """The network interface of this machine that holds `host`'s address, if any."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return None
    for name, entries in psutil.net_if_addrs().items():
        if any(e.address.split("%")[0] in addresses for e in entries):
            return name
    return None


def pin_interface(host: str) -> None:
    """Make TensorPipe and Gloo listen where the store does, unless the caller chose already."""
    ifname = interface_of(host)
    if ifname:
        os.environ.setdefault("TP_SOCKET_IFNAME", ifname)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", ifname)


def _ephemeral_ports() -> str:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return f"{low}-{high}"
    except (OSError, ValueError):
        return "the ephemeral range"


def _peers(host: str, ifname: str) -> tuple[str, str]:
    """Where TensorPipe and Gloo listen (the named interface, else the host name's address):
    the address, and the address described for a terminal."""
    ifname = ifname or os.environ.get("TP_SOCKET_IFNAME") or interface_of(host) or ""
    if ifname:
        entries = psutil.net_if_addrs().get(ifname, [])
        found = next((e.address for e in entries if e.family == socket.AF_INET), None)
        if not found:
            return ifname, f"interface {ifname} (not on this machine)"
        return found, f"{found} ({ifname})"
    name = socket.gethostname()
    try:  # what TensorPipe and Gloo fall back to without an interface
        address = socket.gethostbyname(name)
        return address, f"{address} (what host name {name!r} resolves to)"
    except OSError:
        return "127.0.0.1", f"127.0.0.1 (host name {name!r} does not resolve)"


def _store_address(host: str, port: int) -> str:
    where = {"0.0.0.0": " (every IPv4 interface)", "::": " (every IPv6 interface)"}.get(host, "")
    return f"{_show(host)}:{port or '<a free port picked at start>'}{where}"


def _rpc_warning(exposed: str, ports: str) -> str:
    return (f"WARNING: the job listens on {exposed}. torch RPC is unauthenticated: anyone who can "
            f"reach {ports} there can run code in the job. Firewall those ports from everyone "
            "else; use only on a trusted network.")


def run_listeners(host: str, port: int, workers: int) -> list[str]:
    """What `adt run` with this --host/--port listens on, for a terminal (+ a warning)."""
    if workers == 0:
        return ["listens on: nothing (one process, no RPC)"]
    address, peers = _peers(host, "lo" if is_loopback(host) else "")
    ephemeral = _ephemeral_ports()
    lines = ["listens on:",
             f"  rendezvous store (the PS): {_store_address(host, port)}",
             f"  TensorPipe (RPC) and Gloo, every process: {peers}, ports the OS picks in "
             f"{ephemeral}"]
    exposed = [a for a in (host, address) if not is_loopback(a)]
    if exposed:
        store_port = f"port {port}" if port else "the store's port (pass --port to fix it)"
        lines.append(_rpc_warning(" and ".join(dict.fromkeys(exposed)),
                                  f"{store_port} or ports {ephemeral}"))
    return lines


def launch_listeners(master_host: str, master_port: int, ifname: str, node_rank: int) -> list[str]:
    """What one node of `adt launch` (torchrun) listens on, for a terminal (+ a warning).

    `ifname` is the interface adt hands torchrun's processes (TP_SOCKET_IFNAME), "" for none.
    """
    address, peers = _peers(master_host, ifname)
    ephemeral = _ephemeral_ports()
    lines = ["listens on (this node):"]
    if node_rank == 0:
        lines.append(f"  torchrun's rendezvous store (its agent's, where RPC meets too): every "
                     f"interface (::, IPv4 and IPv6), port {master_port}")
    lines.append(f"  TensorPipe (RPC) and Gloo, every process: {peers}, ports the OS picks "
                 f"in {ephemeral}")
    if not is_loopback(master_host):  # several machines: RPC must be reachable from the others
        if is_loopback(address):
            lines.append(f"  (no other machine can reach {address}: pass --ifname IFACE)")
        exposed = [address] * (not is_loopback(address)) + ["every interface"] * (node_rank == 0)
        ports = f"ports {ephemeral}"
        lines.append(_rpc_warning(" and ".join(exposed),
                                  f"port {master_port} or {ports}" if node_rank == 0 else ports))
    elif node_rank == 0:
        lines.append(f"WARNING: torchrun's store listens on every interface, which adt cannot "
                     f"narrow; it is unauthenticated: anyone who can reach port {master_port} can "
                     "read and write the job's rendezvous keys. Firewall it; on one machine, "
                     "`adt run` listens on loopback only.")
    return lines

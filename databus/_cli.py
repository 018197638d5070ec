"""The ``databus`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ._bus import Bus, embedded_server
from ._config import Settings
from ._errors import DatabusError, redact
from ._local_cluster import CLUSTER_DIR, PRIMARY, ClusterState, LocalCluster
from ._server import ADMIN_USER, DATABUS_USER, ServerState
from ._store import commands


def _print_status(url: str, settings: Settings, state: ServerState | None) -> None:
    bus = Bus(url, settings)
    try:
        prefix = settings.prefix
        memory, sessions, scan_keys = bus.wire.run(
            [commands.memory(), commands.count_sessions(prefix), commands.scans(prefix)]
        )
        live = sum(bus.wire.run([commands.exists(key) for key in scan_keys]))
    finally:
        bus.close()
    cap = memory.get("maxmemory") or 0
    print(f"url:       {redact(url)}")
    if state is not None:
        print(f"socket:    {redact(state.socket_url)}")
        print(f"pid:       {state.pid}")
        print(f"log:       {state.log}")
        if state.auth == "acl":
            print(f"users:     {DATABUS_USER!r} (clients), {ADMIN_USER!r} (admin)")
        else:
            print("users:     none: anyone who reaches the port gets in (--no-auth)")
    used = memory.get("used_memory", 0)
    limit = f" of {cap / 1e6:.0f} MB cap" if cap else " (no cap)"
    print(f"memory:    {used / 1e6:.1f} MB used{limit}")
    print(f"sessions:  {sessions}")
    print(f"scans:     {live}")


def _local_cluster(settings: Settings, args: argparse.Namespace) -> LocalCluster:
    """The local cluster in the embedded server's run directory, as ``args`` ask for
    (the defaults when they do not: stop and status)."""
    return LocalCluster(
        settings.server_dir / CLUSTER_DIR,
        shards=getattr(args, "cluster", None) or 3,
        replicas=getattr(args, "replicas", None) or 0,
        maxmemory=settings.memory_cap,
        binary=settings.server_binary,
        auth="none" if getattr(args, "no_auth", False) else "acl",
        node_timeout_ms=getattr(args, "node_timeout", None) or 1000,
    )


def _slots(ranges: Sequence[tuple[int, int]]) -> str:
    return ",".join(f"{low}-{high}" if high > low else str(low) for low, high in ranges) or "-"


def _print_cluster(cluster: LocalCluster, state: ClusterState) -> None:
    """The cluster's URL and users, then one line per node: port, pid, role, slots, memory."""
    print(
        f"cluster:   {state.shards} primaries, {state.replicas} "
        f"{'replica' if state.replicas == 1 else 'replicas'} each, node timeout "
        f"{state.node_timeout_ms} ms (run dir {cluster.run_dir})"
    )
    print(f"url:       DATABUS_URL={redact(state.url)}")
    if state.auth == "acl":
        print(f"users:     {DATABUS_USER!r} (clients), {ADMIN_USER!r} (admin), secrets in")
        print(f"           {cluster.state_file} (yours only)")
    else:
        print("users:     none: anyone who reaches the ports gets in (--no-auth)")
    memory = cluster.used_memory()
    print(f"{'port':>7} {'pid':>8}  {'role':<8} {'slots':<12} memory")
    for node in state.nodes:
        used = memory.get(node.port)
        role = node.role if node.running else f"{node.role} (down)"
        slots = _slots(node.slots) if node.role == PRIMARY else f"of {node.replica_of or '?'}"
        mb = "-" if used is None else f"{used / 1e6:.1f} MB"
        pid = node.pid if node.running else "-"
        print(f"{node.port:>7} {pid:>8}  {role:<8} {slots:<12} {mb}")


def _start_cluster(settings: Settings, args: argparse.Namespace) -> int:
    """``server start --cluster N``: start the local cluster (or find it running)."""
    if args.appendonly:
        raise ValueError("--appendonly is for the single embedded server, not --cluster")
    cluster = _local_cluster(settings, args)
    before = cluster.status()
    state = cluster.start()
    print("already running" if before is not None else "started the local cluster")
    _print_cluster(cluster, state)
    return 0


def _int_at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``least``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {raw!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value

    return parse


def _cmd_server(args: argparse.Namespace, settings: Settings) -> int:
    server = embedded_server(settings)
    cluster_only = ("replicas", "node_timeout")
    asked = [f"--{k.replace('_', '-')}" for k in cluster_only if getattr(args, k, None) is not None]
    if asked and not (args.action == "start" and args.cluster):
        raise ValueError(f"{' and '.join(asked)}: only with `databus server start --cluster N`")
    if args.action == "start" and args.cluster == 0:
        raise ValueError("databus server start --cluster N: give N, the number of primaries")
    if args.action == "start" and args.cluster:
        return _start_cluster(settings, args)
    if args.action == "start":
        before = server.status()
        server.auth = "none" if args.no_auth else "acl"
        server.appendonly = args.appendonly
        state = server.start()
        what = "already running" if before is not None else "started"
        print(f"{what}: {redact(state.url)} (pid {state.pid})")
        if state.auth == "acl":
            print(
                f"users {DATABUS_USER!r} and {ADMIN_USER!r}; their secrets are in "
                f"{server.state_file} (yours only), read by databus.connect()"
            )
        return 0
    cluster = _local_cluster(settings, args)
    if args.action == "url":
        wanted = args.cluster is not None
        return _print_url(server.status(), cluster.status(), cluster_wanted=wanted)
    if args.action == "stop":
        stopped = [
            what
            for what, ran in (
                ("stopped", server.stop()),
                ("stopped the local cluster", cluster.stop()),
            )
            if ran
        ]
        print("\n".join(stopped) or "no server was running")
        return 0
    current = server.status()
    cluster_state = cluster.status()
    if current is None and cluster_state is None:
        print(f"no embedded server running (run dir {server.run_dir})")
        return 1
    if current is not None:
        _print_status(current.url, settings, current)
    if cluster_state is not None:
        _print_cluster(cluster, cluster_state)
    return 0


def _print_url(
    server: ServerState | None, cluster: ClusterState | None, *, cluster_wanted: bool
) -> int:
    """``server url [--cluster]``: the running server's (or local cluster's) URL, secret
    included, alone on its line: ``export DATABUS_URL=$(databus server url --cluster)``."""
    state = cluster if cluster_wanted else server
    if state is None:
        what = "local cluster (databus server start --cluster N)" if cluster_wanted else "server"
        print(f"no embedded {what} running", file=sys.stderr)
        return 1
    print(state.url)
    return 0


def _cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    if settings.url:
        _print_status(settings.url, settings, None)
        return 0
    return _cmd_server(argparse.Namespace(action="status"), settings)


def _cmd_stop(args: argparse.Namespace, settings: Settings) -> int:
    from ._bus import connect

    with connect(settings=settings) as bus:
        bus.scan(args.scan).request_stop(args.reason)
    print(f"asked {args.scan} to stop")
    return 0


#: The commands whose module parses its own options.
_OWN_OPTIONS = {
    "demo": "databus.clients.demo",
    "monitor": "databus.clients.monitor",
    "writer": "databus.clients.writer",
    "memory-guard": "databus._memory",
    "bridge": "databus.clients.bridge",
    "run": "databus.clients.analysis.run",
    "params": "databus.clients.analysis.params",
    "capture": "databus.clients.capture.capture",
    "replay": "databus.clients.capture.replay",
    "web": "databus.clients.web.server",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``databus`` command."""
    parser = argparse.ArgumentParser(prog="databus", description=__doc__)
    parser.add_argument("--url", help="server URL (default: $DATABUS_URL or the embedded one)")
    parser.add_argument("--prefix", help="key prefix (default: databus)")
    sub = parser.add_subparsers(dest="command", required=True)
    srv = sub.add_parser("server", help="start, stop or inspect the embedded server")
    srv.add_argument(
        "action",
        choices=["start", "stop", "status", "url"],
        help="url: print the URL with its secret (--cluster: the local cluster's), for "
        "export DATABUS_URL=$(databus server url --cluster)",
    )
    auth = srv.add_mutually_exclusive_group()
    auth.add_argument(
        "--password",
        action="store_true",
        help="users with generated secrets (the default; kept for scripts that ask)",
    )
    auth.add_argument(
        "--no-auth", action="store_true", help="no users: anyone who reaches the port gets in"
    )
    srv.add_argument("--appendonly", action="store_true", help="keep an append-only file")
    srv.add_argument(
        "--cluster",
        type=_int_at_least(1),
        nargs="?",
        const=0,
        metavar="N",
        help="start: a local Redis Cluster of N primaries instead (stop and status see it "
        "too); url: the cluster's",
    )
    srv.add_argument(
        "--replicas", type=_int_at_least(0), metavar="R", help="replicas per primary (--cluster)"
    )
    srv.add_argument(
        "--node-timeout",
        type=_int_at_least(1),
        metavar="MS",
        help="the cluster's cluster-node-timeout in ms (--cluster; default 1000)",
    )
    sub.add_parser("status", help="URL, memory used, sessions and scans of the bus")
    sub.add_parser("demo", help="run a short simulated session, followed live", add_help=False)
    sub.add_parser("monitor", help="watch a session's scans live", add_help=False)
    sub.add_parser(
        "writer", help="write the scans of sessions to NeXus files, live", add_help=False
    )
    sub.add_parser("memory-guard", help="keep a server under its memory cap", add_help=False)
    sub.add_parser("bridge", help="bridges to bluesky and others (bridge -h)", add_help=False)
    sub.add_parser("run", help="an analysis (workers and a reducer) on a session", add_help=False)
    sub.add_parser("params", help="show or change an analysis' live parameters", add_help=False)
    sub.add_parser("capture", help="write a session's scans to a capture file", add_help=False)
    sub.add_parser("replay", help="publish a capture's scans again, as new scans", add_help=False)
    sub.add_parser("web", help="the live view in the browser (web -h)", add_help=False)
    stop = sub.add_parser("stop", help="ask a running scan to stop before its next point")
    stop.add_argument("scan", help="the scan's key, e.g. databus:scan:{demo_session:3}")
    stop.add_argument("--reason", default="requested from the command line")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _OWN_OPTIONS:
        from importlib import import_module

        return int(import_module(_OWN_OPTIONS[argv[0]]).main(argv[1:]))
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(url=args.url, prefix=args.prefix)
        if args.command == "server":
            return _cmd_server(args, settings)
        if args.command == "stop":
            return _cmd_stop(args, settings)
        return _cmd_status(args, settings)
    except (DatabusError, ValueError, FileNotFoundError) as exc:
        print(f"databus: {exc}", file=sys.stderr)
        return 2

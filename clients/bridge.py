"""``databus bridge KIND ...``: connect the bus to another system's wire.

Each bridge is a module with its own ``main(argv)`` and options (``databus bridge KIND -h``);
``serve`` is the part every bridge's ``main`` shares.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import Protocol, TypeVar

import databus

log = logging.getLogger(__name__)

BRIDGES = {
    "to-bluesky": ("databus.clients.bluesky.to_bluesky", "bus scans as bluesky documents, 0MQ"),
    "from-bluesky": ("databus.clients.bluesky.from_bluesky", "a bluesky 0MQ proxy into the bus"),
    "frames": ("databus.clients.frames.bridge", "frames to CrystFEL/OnDA and karabo-bridge"),
}


def _usage() -> str:
    kinds = "\n".join(f"  {name:<14} {text}" for name, (_, text) in BRIDGES.items())
    return f"usage: databus bridge KIND [options]   (databus bridge KIND -h)\n\nkinds:\n{kinds}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bridge named by the first argument with the remaining ones."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] not in BRIDGES:
        print(f"databus bridge: unknown kind {args[0]!r}\n{_usage()}", file=sys.stderr)
        return 2
    return int(import_module(BRIDGES[args[0]][0]).main(args[1:]))


def argument_parser(kind: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of ``databus bridge KIND``, with the options every bridge has:
    ``--session`` (required) and ``--url``."""
    parser = argparse.ArgumentParser(
        prog=f"databus bridge {kind}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--session", required=True)
    parser.add_argument("--url", default=None, help="the bus (default: DATABUS_URL or local)")
    return parser


class Bridge(Protocol):
    """What ``serve`` runs: ``run()`` until ``stop()``, then ``close()``."""

    def run(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


B = TypeVar("B", bound=Bridge)


def serve(
    name: str,
    url: str | None,
    build: Callable[[databus.Bus], B],
    banner: Callable[[B], str],
    summary: Callable[[B], str],
) -> int:
    """Connect, build a bridge and run it until SIGINT or SIGTERM; print ``banner`` once
    it runs and ``summary`` (its counts) at exit. Exit code 2 for what ``build`` refuses
    (a bad address or option, an unknown session), 1 if the bridge failed while running."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        bus = databus.connect(url)
    except (ValueError, databus.DatabusError) as exc:
        print(f"databus bridge {name}: error: {exc}", file=sys.stderr)
        return 2
    try:
        bridge = build(bus)
    except (ValueError, databus.DatabusError) as exc:
        bus.close()
        print(f"databus bridge {name}: error: {exc}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: bridge.stop())
    print(f"{name}: {banner(bridge)}", flush=True)
    try:
        bridge.run()
    except Exception as exc:
        log.error("%s stopped: %s: %s", name, type(exc).__name__, exc)
        return 1
    finally:
        bridge.close()
        bus.close()
        print(f"{name}: {summary(bridge)}", flush=True)
    return 0

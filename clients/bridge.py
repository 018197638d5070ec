"""``databus bridge KIND ...``: connect the bus to another system's wire.

Each bridge is a module with its own ``main(argv)`` and options (``databus bridge KIND -h``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module

BRIDGES = {
    "to-bluesky": ("databus.clients.bluesky.to_bluesky", "bus scans as bluesky documents, 0MQ"),
    "from-bluesky": ("databus.clients.bluesky.from_bluesky", "a bluesky 0MQ proxy into the bus"),
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

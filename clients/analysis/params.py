"""``databus params``: show or change the live parameters of an analysis.

    databus params list ANALYSIS              names, types, values, descriptions
    databus params get ANALYSIS [NAME]        one value as text (binary: its raw bytes)
    databus params set ANALYSIS NAME VALUE    checked against the declared type

Values are text: ``3``, ``0.5``, ``true``/``false``. A binary parameter's VALUE ``@FILE``
is FILE's content (``@@...`` is the text ``@...``); other text is taken as its UTF-8
bytes. The types come from the analysis' schema on the bus, written when its workers
start, so nothing here imports the worker. Exit 2 for an unknown analysis or parameter,
a bad value or an unreadable file.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import databus

from ._parameters import BinaryParameter, Parameter, Parameters


def _text(value: Any) -> str:
    """``value`` as ``set`` would take it back (binary: its size and hash)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:16]}>"
    return str(value)


def value_of(param: Parameter, text: str) -> Any:
    """The command line's VALUE for ``param``: ``@FILE`` read for a binary one."""
    if isinstance(param, BinaryParameter) and text.startswith("@"):
        if text.startswith("@@"):
            return text[1:]
        return Path(text[1:]).read_bytes()
    return text


def _list(params: Parameters) -> None:
    values = params.values()
    rows = [
        (p.name, p.type_name, _text(values[p.name]), p.description) for p in params.descriptions
    ]
    if not rows:
        print(f"analysis {params.analysis!r} has no parameters")
        return
    head = ("NAME", "TYPE", "VALUE", "DESCRIPTION")
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(3)]
    for row in (head, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        print("  ".join([*cells, row[3]]).rstrip())


def _get(params: Parameters, name: str | None) -> None:
    values = params.values()
    if name is None:
        for key, value in values.items():
            print(f"{key} = {_text(value)}")
        return
    value = values[params.parameter(name).name]
    if isinstance(value, bytes):
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
    else:
        print(_text(value))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``databus params`` with ``argv`` (default: the command line)."""
    parser = argparse.ArgumentParser(
        prog="databus params",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", help="the bus (default: $DATABUS_URL or the embedded one)")
    parser.add_argument("--prefix", help="key prefix (default: $DATABUS_PREFIX or databus)")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="names, types, values and descriptions")
    listing.add_argument("analysis")
    get = actions.add_parser("get", help="the values, or one value as text")
    get.add_argument("analysis")
    get.add_argument("name", nargs="?")
    put = actions.add_parser("set", help="change a value for every worker")
    put.add_argument("analysis")
    put.add_argument("name")
    put.add_argument("value", help="text; for a binary parameter @FILE reads FILE")
    args = parser.parse_args(argv)
    try:
        with (
            databus.connect(args.url, prefix=args.prefix) as bus,
            Parameters.attach(bus, args.analysis) as params,
        ):
            if args.action == "list":
                _list(params)
            elif args.action == "get":
                _get(params, args.name)
            else:
                param = params.parameter(args.name)
                value = params.set(param.name, value_of(param, args.value))
                print(f"{args.analysis}: {param.name} = {_text(value)}")
    except (databus.DatabusError, LookupError, TypeError, ValueError, OSError) as exc:
        print(f"databus params: {exc}", file=sys.stderr)
        return 2
    return 0

"""``databus run``: an analysis on a session's scans, as map-reduce over processes.

    databus run --worker mod:Class [--reducer mod:Class] --session S --channels a[,NAME=b...]
        [--workers N] [--name ANALYSIS] [--batch N] [--claim-after S] [--from-scan N]
        [--url URL]

Starts N worker processes and runs the reducer in this one. For every scan of the session,
the point indices of the first channel are shared among the workers through the bus (a
point share, ``databus.PointShare``: a Redis consumer group over index ranges of ``--batch``
points; the data stays in the channel streams and is read by the worker that got the
range). Each worker calls ``Class().process_event(event, parameters=...)`` per index and
records the results with its claim; a worker killed outright has its claims taken over by
the others after ``--claim-after`` seconds. The reducer gets each event's result once, in
any order, and ``finish`` once per scan; what it publishes becomes a derived scan. Scans
follow each other without restarting anything; workers started later with the same
``--name`` join the group: ``databus run ... --role worker`` is one more worker (on any
host that reaches the bus), which is what this command starts ``--workers`` times.
``mod`` is imported with the current folder on the path, as ``python -m`` does.
SIGINT/SIGTERM stop the workers after their claim in hand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

import databus

from ._parameters import Parameters
from ._reducer import ReducerRunner
from ._worker import WorkerRunner, describe, parse_channels

log = logging.getLogger(__name__)


def load_class(spec: str) -> type:
    """The class ``module:Name`` names (``module`` importable from the current folder);
    ValueError saying what is wrong."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"give a class as module:Class (e.g. src.worker:TestWorker), not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise ValueError(f"cannot import {module_name!r} for {spec}: {why}") from exc
    found: Any = module
    for part in name.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, type):
        raise ValueError(f"{spec}: module {module_name!r} has no class {name!r}")
    return found


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="databus run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--worker", required=True, metavar="mod:Class")
    parser.add_argument("--reducer", default=None, metavar="mod:Class")
    parser.add_argument("--session", required=True)
    parser.add_argument(
        "--channels", required=True, help="a,xrd=b,...: streams; the first one's points are shared"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--name", default=None, help="the analysis (default: the worker's class)")
    parser.add_argument("--batch", type=int, default=16, help="points per claim (default 16)")
    parser.add_argument("--claim-after", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--from-scan", type=int, default=None, help="a new analysis' first scan")
    parser.add_argument("--url", default=None, help="the bus (default: DATABUS_URL or local)")
    parser.add_argument(
        "--role",
        choices=("reducer", "worker"),
        default="reducer",
        help="worker: this process is one more worker of the analysis (no reducer)",
    )
    parser.add_argument("--consumer", default=None, help="a worker's name in the group")
    return parser


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _without(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--role worker`` or ``--role=worker``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _worker_command(argv: Sequence[str], n: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "databus",
        "run",
        *argv,
        "--role",
        "worker",
        "--consumer",
        f"{os.getpid()}-w{n}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``databus run ...`` (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argument_parser().parse_args(argv)
    try:
        worker_class = load_class(args.worker)
        reducer_class = load_class(args.reducer) if args.reducer else None
        channels = parse_channels(args.channels)
        if args.workers < 0 or args.batch < 1:
            raise ValueError("--workers is >= 0 and --batch >= 1")
        bus = databus.connect(args.url)
    except (ValueError, databus.DatabusError) as exc:
        print(f"databus run: {exc}", file=sys.stderr)
        return 2
    name = args.name or worker_class.__name__
    stop = _stop_on_signals()
    if args.role == "worker":
        runner = WorkerRunner(
            bus, args.session, name, worker_class, channels,
            consumer=args.consumer, batch=args.batch, claim_after=args.claim_after,
            first_scan=args.from_scan,
        )  # fmt: skip
        runner.run(stop)
        print(f"worker {runner.name}: {runner.events} events, {runner.errors} failed", flush=True)
        return 0
    own = _without(argv, "--role")
    workers = [subprocess.Popen(_worker_command(own, n)) for n in range(args.workers)]
    parameters = Parameters(bus, name, describe(worker_class))
    reducer = ReducerRunner(
        bus, args.session, name, reducer_class, next(iter(channels.values())), parameters,
        on_finish=lambda key, r: print(
            f"{key}: {r.given} results, {len(r.errors)} failed events", flush=True
        ),
    )  # fmt: skip
    print(f"analysis {name} on session {args.session}: {args.workers} workers", flush=True)
    try:
        reducer.run(stop)
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait()
        parameters.close()
        bus.close()
    print(f"{reducer.finished} scans reduced, {reducer.duplicates} duplicate results dropped")
    return 0

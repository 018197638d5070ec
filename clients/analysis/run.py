"""``databus run``: an analysis on a session's scans, as map-reduce over processes.

    databus run --worker mod:Class [--reducer mod:Class] --session S --channels a[,NAME=b...]
        [--workers N] [--name ANALYSIS] [--batch N] [--claim-after S] [--from-scan N]
        [--param NAME=VALUE ...] [--url URL]
    databus run --worker mod:Class [--reducer mod:Class] --channels a[,NAME=b...]
        --replay FILE [--speed max|1|10] [--session S] [--workers N] [--url URL] ...

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
SIGINT/SIGTERM stop the workers after their claim in hand. ``--param NAME=VALUE`` sets a
live parameter of the analysis before its workers start (``databus params set``'s rules:
``NAME=@FILE`` reads a binary one from FILE).

Offline, ``--replay FILE`` runs the same workers and reducer over a capture (a databus
capture or a dranspose ``.cbors`` dump): its scans are published again into session
``--session`` (default ``replay``) of a private embedded server started for the run and
stopped at its end (or of the bus ``--url`` names), at ``--speed`` times the captured pace
(default ``max``: as fast as possible), and the command exits once the reducer has
finished every replayed scan (1 if the capture breaks off or a part of the run fails).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import databus

from .._arguments import parse_assignments
from ..capture._pace import parse_speed
from ._offline import Completion, private_bus, publish, with_points
from ._parameters import Parameters
from ._reducer import ReducerRunner
from ._worker import WorkerRunner, describe, parse_channels, share_group
from .params import value_of

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
    parser.add_argument("--session", default=None, help="the session (with --replay: replay)")
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
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a parameter at the start, as `databus params set` (binary: NAME=@FILE)",
    )
    parser.add_argument(
        "--replay", default=None, metavar="FILE", help="analyse the scans of this capture, offline"
    )
    parser.add_argument(
        "--speed", default="max", help="--replay's pace: max, or a factor of the captured one"
    )
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


@dataclasses.dataclass(frozen=True)
class _Analysis:
    """What the command line asks to run: analysis ``name`` of ``worker`` (and ``reducer``)
    on ``session``'s scans, reading ``channels`` (stream -> channel; the first is shared)."""

    name: str
    session: str
    worker: type
    reducer: type | None
    channels: dict[str, str]

    @property
    def shared(self) -> str:
        return next(iter(self.channels.values()))


def _start_workers(
    argv: list[str], count: int, env: dict[str, str] | None = None
) -> list[subprocess.Popen]:
    return [subprocess.Popen(_worker_command(argv, n), env=env) for n in range(count)]


def _stop_workers(workers: list[subprocess.Popen]) -> None:
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        proc.wait()


def set_parameters(parameters: Parameters, assignments: Sequence[str]) -> None:
    """``--param NAME=VALUE`` values set for every worker, as ``databus params set`` does;
    LookupError, TypeError or ValueError naming a bad one, OSError for an unreadable file."""
    for name, text in parse_assignments("--param", assignments).items():
        param = parameters.parameter(name)
        parameters.set(param.name, value_of(param, text))


def _finished(key: str, reduction: Any) -> None:
    print(f"{key}: {reduction.given} results, {len(reduction.errors)} failed events", flush=True)


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
        offline = args.replay is not None and args.role == "reducer"
        session = args.session or ("replay" if offline else None)
        if session is None:
            raise ValueError("--session names the session whose scans are analysed")
        name = args.name or worker_class.__name__
        analysis = _Analysis(name, session, worker_class, reducer_class, channels)
        if offline:
            return _replay(args, argv, analysis)
        if args.speed != "max":
            raise ValueError("--speed is the pace of --replay FILE; give both")
        bus = databus.connect(args.url)
    except (ValueError, databus.DatabusError) as exc:
        print(f"databus run: {exc}", file=sys.stderr)
        return 2
    stop = _stop_on_signals()
    if args.role == "worker":
        runner = WorkerRunner(
            bus, session, name, worker_class, channels,
            consumer=args.consumer, batch=args.batch, claim_after=args.claim_after,
            first_scan=args.from_scan,
        )  # fmt: skip
        runner.run(stop)
        print(f"worker {runner.name}: {runner.events} events, {runner.errors} failed", flush=True)
        return 0
    parameters = Parameters(bus, name, describe(worker_class))
    try:
        set_parameters(parameters, args.param)
    except (LookupError, TypeError, ValueError, OSError) as exc:
        print(f"databus run: {exc}", file=sys.stderr)
        parameters.close()
        bus.close()
        return 2
    workers = _start_workers(_without(_without(argv, "--role"), "--param"), args.workers)
    reducer = ReducerRunner(
        bus, session, name, reducer_class, analysis.shared, parameters, on_finish=_finished
    )
    print(f"analysis {name} on session {session}: {args.workers} workers", flush=True)
    try:
        reducer.run(stop)
    finally:
        _stop_workers(workers)
        parameters.close()
        bus.close()
    print(f"{reducer.finished} scans reduced, {reducer.duplicates} duplicate results dropped")
    return 0


def _replay(args: argparse.Namespace, argv: list[str], analysis: _Analysis) -> int:
    """``databus run --replay FILE``: 0 once every replayed scan is reduced, 1 if the
    capture or the run broke off (the message says why); ValueError for arguments it
    refuses. SIGTERM, like Ctrl-C, interrupts it; the private server is stopped either way."""
    path = Path(args.replay)
    speed = parse_speed(args.speed)
    if args.workers < 1:
        raise ValueError("--replay needs a worker at least (--workers >= 1)")
    if not path.is_file():
        raise ValueError(f"--replay {args.replay}: no such file")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    own = argv
    for option in ("--role", "--replay", "--speed", "--param"):
        own = _without(own, option)
    try:
        with contextlib.ExitStack() as stack:
            if args.url is None:
                bus = stack.enter_context(private_bus())
                env = {**os.environ, "DATABUS_URL": bus.url}  # not on the command line
                state = bus.server.status() if bus.server is not None else None
                where = f"a private server (pid {state.pid if state else '?'})"
            else:
                bus = stack.enter_context(contextlib.closing(databus.connect(args.url)))
                env, where = None, repr(bus)
            print(f"replaying {path} into session {analysis.session} of {where}", flush=True)
            # The analysis' group exists before the first replayed scan: it serves them all.
            group = share_group(analysis.name)
            bus.session(analysis.session).share(analysis.shared, group).close()
            workers = _start_workers([*own, "--session", analysis.session], args.workers, env)
            try:
                return _reduce_replayed(bus, path, speed, analysis, workers, args.param)
            finally:
                _stop_workers(workers)
    except KeyboardInterrupt:
        print("databus run: interrupted; the private server is stopped", file=sys.stderr)
        return 1
    except (LookupError, TypeError, ValueError, OSError, RuntimeError, databus.DatabusError) as exc:
        print(f"databus run: {exc}", file=sys.stderr)
        return 1


def _reduce_replayed(
    bus: databus.Bus,
    path: Path,
    speed: float | None,
    analysis: _Analysis,
    workers: list[subprocess.Popen],
    params: list[str],
) -> int:
    """Publish the capture while a reducer thread reduces; return once every replayed
    scan with points is finished (RuntimeError if the reducer or every worker stopped)."""
    parameters = Parameters(bus, analysis.name, describe(analysis.worker))
    set_parameters(parameters, params)
    completion = Completion()

    def finished(key: str, reduction: Any) -> None:
        _finished(key, reduction)
        completion.finished(key, reduction)

    reducer = ReducerRunner(
        bus, analysis.session, analysis.name, analysis.reducer, analysis.shared, parameters,
        on_finish=finished,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=reducer.run, args=(stop,), name="reducer", daemon=True)
    thread.start()
    try:
        numbers = publish(bus, path, analysis.session, speed)
        print(f"{len(numbers)} scans replayed; {len(workers)} workers", flush=True)
        completion.expect(with_points(bus, analysis.session, numbers, analysis.shared))
        while not completion.done.wait(0.2):
            if not thread.is_alive():
                raise RuntimeError("the reducer stopped (its error is above)")
            if all(proc.poll() is not None for proc in workers):
                raise RuntimeError("every worker exited (their errors are above)")
    finally:
        stop.set()
        thread.join()
        parameters.close()
    print(f"{reducer.finished} scans reduced, {reducer.duplicates} duplicate results dropped")
    return 0

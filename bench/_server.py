"""What every bench shares: its options (--quick, --rounds or --runs, --url) and the
server it runs against, the one named by --url or a private embedded one."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from databus._server import EmbeddedServer


@contextlib.contextmanager
def bench_server(url: str | None) -> Iterator[str]:
    """Yield ``url``, or the URL of an embedded server (4 GB cap) started for the bench
    in a temporary directory and stopped afterwards."""
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedServer(Path(tmp), maxmemory=4 * 10**9)
        try:
            yield server.start().url
        finally:
            server.stop()


def bench_arguments(doc: str, repeat: str = "rounds", url: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every bench takes: ``--quick`` (one short round),
    ``--<repeat>`` (how many, default 3) and ``--url`` (a server of yours)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"one short {repeat[:-1]}")
    parser.add_argument("--" + repeat, type=int, default=None, help=f"{repeat} (default 3)")
    if url:
        parser.add_argument("--url", help="use this server instead of a private embedded one")
    return parser


#: What a bench's figure is: (unit, target or None, comparison ">=", "<=" or "==").
Figure = tuple[str, "float | None", str]


def print_table(figures: dict[str, Figure], out: dict[str, float]) -> bool:
    """Print each figure of ``out`` with its unit and target, in the order of ``figures``;
    True if every target is met."""
    width = max(len(name) for name in figures) + 2
    print(f"{'figure':<{width}}{'value':>14}  {'unit':<9}{'target':>9}  met")
    all_met = True
    for name, (unit, target, op) in figures.items():
        value = out[name]
        met = shown = ""
        if target is not None:
            ok = {">=": value >= target, "<=": value <= target, "==": value == target}[op]
            all_met &= ok
            met, shown = ("yes" if ok else "NO"), f"{op} {target:g}"
        print(f"{name:<{width}}{value:>14,.2f}  {unit:<9}{shown:>9}  {met}")
    return all_met


def report(figures: dict[str, Figure], out: dict[str, float], *, quick: bool) -> int:
    """Print the table of ``out`` and, as the last line, its values as one JSON object;
    the exit code: 0 if every target is met (or for a quick smoke run), else 1."""
    all_met = print_table(figures, out)
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))
    return 0 if all_met or quick else 1


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGINT to ``proc`` (a databus command prints its counts and exits), ``grace``
    seconds to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()

"""``databus run`` (online analysis as map-reduce) against the targets of issue 15.

    python bench/analysis.py            # 3 runs, medians
    python bench/analysis.py --quick    # one short run (fewer points), a smoke run
    python bench/analysis.py --profile DIR   # every analysis process under cProfile,
                                             # DIR/<figure>-<run>-<role>-<pid>.prof

Every part is a process of its own, against a private embedded server: the publisher (this
script, ``--publish``) and each analysis (``python -m databus run``, which starts its
worker processes). A scan is published and ended first; each analysis then starts with a
fresh ``--name`` and ``--from-scan`` of that scan, so it works through the whole scan as
fast as it can. Its workers and reducers are this module's classes (imported as
``analysis``: the bench folder is put on PYTHONPATH) or the tutorial's
(examples/analysis_tutorial). An analysis' time runs from its launch (``Popen``) to the
``ended`` time of the derived scan its reducer publishes. The target figures are rates once
the analysis runs: from the derived scan's creation (the first claim's results reduced)
to its end, over the points after the first claim. Starting the processes (imports,
``startup_s``) is paid once per ``databus run``, not per scan or point: each
``..._with_startup`` figure counts it, from the launch.

- speedup_2_workers: ``BusyWorker`` (numpy work on the frame, calibrated here to cost
  about 20 ms of CPU per uint16 1024x1024 frame: busy_ms_per_frame) on a scan of
  BUSY_FRAMES frames, ``--workers 1`` against ``--workers 2``: the time of 1 over the time
  of 2 (seconds_1_worker, seconds_2_workers).
- exactly_once: 1 if, with 2 ``SleepWorker`` processes (3 ms a point) on a scan of
  KILL_POINTS scalars and one of them killed with SIGKILL once the reducer has a quarter
  of the points (``--claim-after 1``), the derived scan has every event number once;
  else 0. The worst run's.
- dispatch_overhead_us: ``QuickWorker`` (returns the event number at once), 1 worker,
  the default ``--batch``, on a scan of DISPATCH_POINTS scalars: the time per point;
  dispatch_overhead_us_batch64 the same with ``--batch 64``.
- frames_per_s_1_worker: the tutorial's worker (ROI mean) and reducer (deltas), 1 worker,
  on a scan of ROI_FRAMES uint16 1024x1024 frames (2 MiB): points per second.
- startup_s: the launch of the 1-worker ``BusyWorker`` analysis to its derived scan's
  creation, less the first claim's work.

Every reducer publishes a point per event, so each figure includes the reducer's work.
Prints one table, then as its last line one JSON object with the medians.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _server import Figure, bench_arguments, bench_server, print_table, stop_process

import databus

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # as `databus run`, started in ROOT, has it

# The tutorial's classes, for `databus run --worker analysis:TutorialWorker ...`.
from examples.analysis_tutorial.reducer import TestReducer  # noqa: E402
from examples.analysis_tutorial.worker import TestWorker as TutorialWorker  # noqa: E402, F401


class TutorialReducer(TestReducer):
    """The tutorial's reducer, also publishing each delta (the bench reads them back)."""

    def process_result(self, result: Any, parameters: Any = None) -> None:
        super().process_result(result, parameters)
        self.publish("delta", self.evolution[result.event_number])  # type: ignore[attr-defined]


PREFIX = "benchanalysis"
SESSION = "bench_analysis"
FRAME = (1024, 1024)  # uint16: 2 MiB
BUSY_FRAMES, QUICK_BUSY_FRAMES = 200, 40
ROI_FRAMES, QUICK_ROI_FRAMES = 600, 100
DISPATCH_POINTS, QUICK_DISPATCH_POINTS = 20_000, 2_000
KILL_POINTS, QUICK_KILL_POINTS = 1_000, 400
BUSY_S = 0.020  # the CPU a BusyWorker spends on a frame
SLEEP_S = 0.003  # what a SleepWorker waits per point
LARGE_BATCH = 64
DEFAULT_BATCH = 16  # ``databus run``'s default --batch
END_S = 300.0  # the longest an analysis may take to end its derived scan
REPEATS_ENV = "BENCH_ANALYSIS_BUSY_REPEATS"
PROFILE_ENV = "BENCH_ANALYSIS_PROFILE"
# name: (unit, target, comparison)
FIGURES: dict[str, Figure] = {
    "speedup_2_workers": ("", 1.7, ">="),
    "exactly_once": ("bool", 1, "=="),
    "dispatch_overhead_us": ("us", 200, "<="),
    "frames_per_s_1_worker": ("frames/s", 300, ">="),
    "speedup_2_workers_with_startup": ("", None, ""),
    "seconds_1_worker": ("s", None, ""),
    "seconds_2_workers": ("s", None, ""),
    "busy_ms_per_frame": ("ms", None, ""),
    "dispatch_overhead_us_with_startup": ("us", None, ""),
    "dispatch_overhead_us_batch64": ("us", None, ""),
    "dispatch_overhead_us_batch64_with_startup": ("us", None, ""),
    "frames_per_s_1_worker_with_startup": ("frames/s", None, ""),
    "startup_s": ("s", None, ""),
}
WORST = ("exactly_once",)


# ---------------------------------------------------------------- the analyses' classes


def busy(frame: np.ndarray, repeats: int) -> float:
    """CPU work on ``frame``, ``repeats`` passes of a square root and a sum (numpy runs
    these on one core)."""
    total = 0.0
    for _ in range(repeats):
        total += float(np.sqrt(frame, dtype=np.float32).sum())
    return total


class BusyWorker:
    """``busy`` on the frame of stream ``image`` (``BENCH_ANALYSIS_BUSY_REPEATS``
    passes); returns the event number."""

    def __init__(self) -> None:
        self.repeats = int(os.environ.get(REPEATS_ENV, "1"))

    def process_event(self, event: Any, parameters: Any = None) -> int:
        busy(event.streams["image"], self.repeats)
        return int(event.event_number)


class QuickWorker:
    """Returns the event number at once."""

    def process_event(self, event: Any, parameters: Any = None) -> int:
        return int(event.event_number)


class SleepWorker:
    """Waits ``SLEEP_S`` (a worker that is still busy when it is killed), returns the
    event number."""

    def process_event(self, event: Any, parameters: Any = None) -> int:
        time.sleep(SLEEP_S)
        return int(event.event_number)


class NumberReducer:
    """Publishes the event number of each result it is given (channel ``event``)."""

    publish: Any  # set by the reducer runtime

    def process_result(self, result: Any, parameters: Any = None) -> None:
        self.publish("event", result.event_number)


def _profile_this_process() -> None:
    """Under ``--profile``, the analysis processes (which import this module for their
    classes) run under cProfile from here on, dumped at their exit."""
    where = os.environ.get(PROFILE_ENV)
    if not where or __name__ == "__main__":
        return
    role = "worker" if "worker" in sys.argv else "reducer"
    profiler = cProfile.Profile()
    profiler.enable()
    atexit.register(profiler.dump_stats, f"{where}-{role}-{os.getpid()}.prof")


_profile_this_process()


# ---------------------------------------------------------------- child processes


def publish(kind: str, points: int) -> None:
    """Publish a scan of ``points`` frames (``kind`` frames: uint16 1024x1024 on
    ``det:image``, 8 different ones in turn) or scalars (``det:value``), end it, and
    print its number and key as JSON."""
    bus = databus.connect()  # DATABUS_URL and DATABUS_PREFIX
    scan = bus.session(SESSION).create_scan(title=f"analysis bench: {points} {kind}")
    if kind == "frames":
        rng = np.random.default_rng(0)
        pool = [rng.integers(0, 4000, FRAME, dtype=np.uint16) for _ in range(8)]
        channel = scan.channel("det:image", "uint16", FRAME, copy=False)
    else:
        channel = scan.channel("det:value", "float64", ())
    scan.prepare()
    scan.start()
    for i in range(points):
        channel.send(pool[i % len(pool)] if kind == "frames" else float(i))
    scan.end()
    print(json.dumps({"number": scan.number, "key": scan.key}), flush=True)
    bus.close()


# ---------------------------------------------------------------- running them


def _env(url: str, repeats: int, profile: str | None) -> dict[str, str]:
    """The environment of the publisher and the analyses: the bench's server and prefix,
    this folder on the path, the busy worker's repeats, and where profiles go."""
    env = {**os.environ, "DATABUS_URL": url, "DATABUS_PREFIX": PREFIX, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env[REPEATS_ENV] = str(repeats)
    env.pop(PROFILE_ENV, None)
    if profile is not None:
        env[PROFILE_ENV] = profile
    return env


@dataclass(frozen=True)
class Published:
    number: int
    key: str


def published(url: str, kind: str, points: int) -> Published:
    """A scan of ``points`` ``kind`` (frames, scalars), published by a process of its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--publish", kind, str(points)],
        env=_env(url, 1, None),
        capture_output=True,
        text=True,
        check=True,
        timeout=END_S,
    )
    report = json.loads(out.stdout.splitlines()[-1])
    return Published(report["number"], report["key"])


@dataclass(frozen=True)
class Timing:
    """One analysis of a scan: its derived scan's event numbers, and when (unix seconds)
    it was launched, when its derived scan was created and when that ended."""

    events: list[int]
    launched: float
    created: float
    ended: float
    output: str  #: what ``databus run`` and its workers printed and logged

    def seconds(self) -> float:
        return self.ended - self.launched

    def steady_seconds_per_point(self, batch: int) -> float:
        """Seconds a point from the derived scan's creation to its end: the first claim's
        points were done before it was created."""
        return (self.ended - self.created) / max(len(self.events) - batch, 1)


@dataclass(frozen=True)
class Analysis:
    """What one ``databus run`` runs: classes, stream, workers, batch."""

    name: str
    worker: str
    reducer: str
    channels: str
    workers: int = 1
    batch: int = DEFAULT_BATCH
    claim_after: float = 30.0
    events_channel: str = "event"


def _derived(bus: databus.Bus, scan: Published, name: str) -> databus.ScanNode | None:
    """The derived scan analysis ``name`` published for ``scan``, once it has ended."""
    _, found = bus.find_scans(session=SESSION, source=scan.key, analysis=name)
    for key in found:
        node = bus.scan(key)
        if node.state >= databus.ScanState.ENDED:
            return node
    return None


def analyse(
    url: str,
    scan: Published,
    analysis: Analysis,
    env: dict[str, str],
    kill_at: int | None = None,
) -> Timing:
    """Run ``analysis`` on ``scan`` until its derived scan ends; with ``kill_at``, one of
    its workers is killed (SIGKILL) once the derived scan has that many points."""
    command = [sys.executable, "-m", "databus", "run", "--session", SESSION]
    command += ["--worker", analysis.worker, "--reducer", analysis.reducer]
    command += ["--channels", analysis.channels, "--workers", str(analysis.workers)]
    command += ["--name", analysis.name, "--from-scan", str(scan.number)]
    command += ["--batch", str(analysis.batch), "--claim-after", str(analysis.claim_after)]
    bus = databus.connect(url, prefix=PREFIX)
    with tempfile.TemporaryFile("w+") as log:
        launched = time.time()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            node = _wait_end(bus, scan, analysis, proc, kill_at)
        except BaseException:
            _stop(proc)
            log.seek(0)
            sys.stderr.write(log.read()[-4000:])
            raise
        _stop(proc)
        log.seek(0)
        output = log.read()
    events = node.channels[analysis.events_channel].get_as_array(0, -1)
    bus.close()
    if node.created is None or node.ended is None:
        raise RuntimeError(f"derived scan {node.key} has no creation or end time")
    return Timing(np.asarray(events).tolist(), launched, node.created, node.ended, output)


def _wait_end(
    bus: databus.Bus,
    scan: Published,
    analysis: Analysis,
    proc: subprocess.Popen[bytes],
    kill_at: int | None,
) -> databus.ScanNode:
    """Poll for the derived scan's end, killing a worker on the way if asked (an end
    before the kill is an error: the figure would say nothing)."""
    deadline = time.monotonic() + END_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"databus run ({analysis.name}) exited with {proc.returncode}")
        node = _derived(bus, scan, analysis.name)
        if node is not None:
            if kill_at is not None:
                raise RuntimeError(f"{analysis.name} ended before a worker could be killed")
            return node
        if kill_at is not None and _reduced(bus, scan, analysis) >= kill_at:
            _kill_a_worker(proc)
            kill_at = None
        time.sleep(0.02)
    raise RuntimeError(f"{analysis.name}: no derived scan of {scan.key} ended in {END_S:g} s")


def _reduced(bus: databus.Bus, scan: Published, analysis: Analysis) -> int:
    """Points the derived scan of ``analysis`` has so far (0 before it exists)."""
    _, found = bus.find_scans(session=SESSION, source=scan.key, analysis=analysis.name)
    if not found:
        return 0
    channels = bus.scan(found[0]).channels
    events = channels.get(analysis.events_channel)
    return len(events) if events is not None else 0


def _kill_a_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the first worker process ``databus run`` ``proc`` started."""
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    if not children:
        raise RuntimeError(f"databus run (pid {proc.pid}) has no worker process to kill")
    os.kill(int(children[0]), signal.SIGKILL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (the workers finish their claim and exit), then 30 s, then SIGKILL."""
    stop_process(proc, 30)


def calibrate() -> tuple[int, float]:
    """The passes of ``busy`` that cost about ``BUSY_S`` on a 2 MiB frame here, and the
    milliseconds that many passes take (median of 10)."""
    frame = np.random.default_rng(1).integers(0, 4000, FRAME, dtype=np.uint16)

    def cost(repeats: int) -> float:
        times = []
        for _ in range(10):
            start = time.process_time()
            busy(frame, repeats)
            times.append(time.process_time() - start)
        return statistics.median(times)

    repeats = max(1, round(BUSY_S / cost(1)))
    return repeats, cost(repeats) * 1e3


def _drop(url: str, scans: list[Published]) -> None:
    """Delete the source scans' channels (the server's memory is for the next run)."""
    bus = databus.connect(url, prefix=PREFIX)
    doomed = [c.key for s in scans for c in bus.scan(s.key).channels.values()]
    if doomed:
        bus.redis.delete(*doomed)
    bus.close()


def _exact(timing: Timing, points: int, what: str) -> None:
    """A time over points that did not all come once is no time: say so."""
    if sorted(timing.events) != list(range(points)):
        raise RuntimeError(
            f"{what}: the reducer did not get each of the {points} events once; "
            f"databus run said:\n{timing.output[-4000:]}"
        )


def one_run(
    url: str, run: int, quick: bool, repeats: int, profile: Path | None
) -> dict[str, float]:
    """Every figure once."""
    busy_frames = QUICK_BUSY_FRAMES if quick else BUSY_FRAMES
    roi_frames = QUICK_ROI_FRAMES if quick else ROI_FRAMES
    dispatch_points = QUICK_DISPATCH_POINTS if quick else DISPATCH_POINTS
    kill_points = QUICK_KILL_POINTS if quick else KILL_POINTS

    def env(figure: str) -> dict[str, str]:
        where = str(profile / f"{figure}-{run}") if profile is not None else None
        return _env(url, repeats, where)

    out: dict[str, float] = {}
    frames = published(url, "frames", busy_frames)
    timings = {}
    for workers in (1, 2):
        name = f"busy{workers}-{run}"
        analysis = Analysis(name, "analysis:BusyWorker", "analysis:NumberReducer",
                            "image=det:image", workers=workers)  # fmt: skip
        timings[workers] = analyse(url, frames, analysis, env(f"busy{workers}"))
        _exact(timings[workers], busy_frames, name)
    one, two = timings[1], timings[2]
    out["seconds_1_worker"] = one.seconds()
    out["seconds_2_workers"] = two.seconds()
    out["speedup_2_workers_with_startup"] = one.seconds() / two.seconds()
    steady = one.steady_seconds_per_point(DEFAULT_BATCH) / two.steady_seconds_per_point(
        DEFAULT_BATCH
    )
    out["speedup_2_workers"] = steady
    first_claim = DEFAULT_BATCH * one.steady_seconds_per_point(DEFAULT_BATCH)
    out["startup_s"] = one.created - one.launched - first_claim

    scalars = published(url, "scalars", dispatch_points)
    for batch, label in ((DEFAULT_BATCH, ""), (LARGE_BATCH, f"_batch{LARGE_BATCH}")):
        name = f"quick{batch}-{run}"
        analysis = Analysis(name, "analysis:QuickWorker", "analysis:NumberReducer",
                            "value=det:value", batch=batch)  # fmt: skip
        timing = analyse(url, scalars, analysis, env(f"quick{batch}"))
        _exact(timing, dispatch_points, name)
        with_startup = timing.seconds() / dispatch_points * 1e6
        out[f"dispatch_overhead_us{label}_with_startup"] = with_startup
        out[f"dispatch_overhead_us{label}"] = timing.steady_seconds_per_point(batch) * 1e6

    killed = published(url, "scalars", kill_points)
    analysis = Analysis(f"kill-{run}", "analysis:SleepWorker", "analysis:NumberReducer",
                        "value=det:value", workers=2, claim_after=1.0)  # fmt: skip
    timing = analyse(url, killed, analysis, env("kill"), kill_at=kill_points // 4)
    out["exactly_once"] = float(sorted(timing.events) == list(range(kill_points)))

    roi = published(url, "frames", roi_frames)
    analysis = Analysis(f"roi-{run}", "analysis:TutorialWorker", "analysis:TutorialReducer",
                        "xrd=det:image", events_channel="delta")  # fmt: skip
    timing = analyse(url, roi, analysis, env("roi"))
    if len(timing.events) != roi_frames:
        raise RuntimeError(f"roi-{run}: {len(timing.events)} deltas for {roi_frames} frames")
    out["frames_per_s_1_worker_with_startup"] = roi_frames / timing.seconds()
    out["frames_per_s_1_worker"] = 1 / timing.steady_seconds_per_point(DEFAULT_BATCH)
    _drop(url, [frames, scalars, killed, roi])
    return out


def combined(name: str, values: list[float]) -> float:
    """The runs' median; for exactly_once, the worst run's."""
    return min(values) if name in WORST else statistics.median(values)


def main() -> int:
    parser = bench_arguments(__doc__, "runs")
    parser.add_argument("--profile", type=Path, help="run the analyses under cProfile, into DIR")
    parser.add_argument("--publish", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish:
        kind, points = args.publish
        publish(kind, int(points))
        return 0
    runs = args.runs or (1 if args.quick else 3)
    profile = args.profile.resolve() if args.profile is not None else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    repeats, busy_ms = calibrate()
    with bench_server(args.url) as url:
        results = [one_run(url, run, args.quick, repeats, profile) for run in range(runs)]
    for result in results:
        result["busy_ms_per_frame"] = busy_ms
    out = {k: combined(k, [r[k] for r in results]) for k in FIGURES}
    busy_frames = QUICK_BUSY_FRAMES if args.quick else BUSY_FRAMES
    roi_frames = QUICK_ROI_FRAMES if args.quick else ROI_FRAMES
    dispatch_points = QUICK_DISPATCH_POINTS if args.quick else DISPATCH_POINTS
    print(
        f"databus analysis bench: {runs} run(s), medians; {busy_frames} busy and {roi_frames} "
        f"ROI uint16 {FRAME[0]}x{FRAME[1]} frames, {dispatch_points} scalars"
    )
    all_met = print_table(FIGURES, out)
    shown: dict[str, Any] = {k: round(v, 4) for k, v in out.items()}
    shown["exactly_once"] = out["exactly_once"] == 1
    print(json.dumps(shown))
    return 0 if all_met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())

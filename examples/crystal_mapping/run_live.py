"""The crystal-mapping pipeline live, end to end, on a simulated sample. From the
repository's root::

    python -m examples.crystal_mapping.run_live [--root DIR] [--grid 12x10] [--size 128]
        [--frames 4] [--seed 0] [--workers 2] [--callbacks] [--url URL]

1. The background, as a beamline user takes it: the stage moves to a position with no
   crystal, a few points are counted, and their mean frame is saved (``DIR/background.npy``).
2. The NeXus writer (``databus writer --root DIR``) and the analysis (``databus run`` of
   ``CrystalMapWorker``/``CrystalMapReducer``, ``--workers`` processes) start, and the
   analysis gets the background (its ``background`` parameter holds the file's bytes).
   With ``--callbacks`` the seed's form runs too: ``databus bridge to-bluesky`` feeding
   ``server.py`` (ImageProcessor -> PeakTracker -> TrackLinker behind a RemoteDispatcher).
3. The mesh: ``amesh`` of the stage over the sample, ``--frames`` frames per point of a
   ``BraggDetector`` (``databus.sim``), whose planted peaks are in the scan info.
4. The crystal map: the processed scan the reducer published, compared with the planted
   peaks, and the file the writer put it in (``<raw>_processed.h5``, its default plot the
   ``total`` map over the grid); with ``--callbacks``, whether the callbacks' map is the same.

With no URL (nor ``DATABUS_URL``) it uses the embedded server. Every process's output goes
to ``DIR/logs/``. The last line printed is one JSON object saying where everything is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import databus
from databus import scan
from databus.clients.analysis import Parameters
from databus.sim import BraggDetector, SimMotor

from .peaks import CrystalMap, peak_channel
from .truth import compare
from .worker import CrystalMapWorker

#: The repository, where ``databus run`` and ``server.py`` import ``examples`` from.
ROOT = Path(__file__).resolve().parents[2]
WORKER = "examples.crystal_mapping.worker:CrystalMapWorker"
REDUCER = "examples.crystal_mapping.reducer:CrystalMapReducer"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.crystal_mapping.run_live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", type=Path, default=Path("crystal_mapping_data"))
    parser.add_argument("--session", default="crystal_mapping")
    parser.add_argument("--grid", default="12x10", help="fast x slow points (default 12x10)")
    parser.add_argument("--size", type=int, default=128, help="frames of SIZE x SIZE pixels")
    parser.add_argument("--frames", type=int, default=4, help="frames per point (default 4)")
    parser.add_argument("--count-time", type=float, default=0.01, help="seconds per point")
    parser.add_argument("--seed", type=int, default=0, help="the simulated sample's")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--name", default="CrystalMapWorker", help="the analysis' name")
    parser.add_argument("--callbacks", action="store_true", help="run the bluesky form too")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--url", default=None, help="the bus (default: DATABUS_URL or local)")
    return parser


class Processes:
    """The pipeline's processes, their output in ``logs``; ``stop()`` ends them all."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.logs, self.env = logs, env
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> Path:
        """Start ``python args...`` in the repository; the path of its log."""
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            self.running[name] = subprocess.Popen(
                [sys.executable, *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return log

    def wait_for(self, name: str, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in ``name``'s output, once it is there."""
        deadline = time.monotonic() + timeout
        log = self.logs / f"{name}.log"
        while (found := re.search(pattern, log.read_text(errors="replace"))) is None:
            if self.running[name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not print {pattern!r}; see {log}")
            time.sleep(0.05)
        return found

    def wait_exit(self, name: str, timeout: float) -> None:
        try:
            code = self.running[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{name} did not finish; see {self.logs / name}.log") from None
        if code != 0:
            raise RuntimeError(f"{name} exited with {code}; see {self.logs / name}.log")

    def stop(self, *names: str) -> None:
        """SIGINT to each of ``names`` (all: none named), which finish what they hold,
        then 30 s, then SIGKILL."""
        chosen = [self.running[n] for n in names] if names else list(self.running.values())
        for proc in chosen:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in chosen:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def take_background(det: BraggDetector, points: int, count_time: float, out: Path) -> Path:
    """Count ``points`` points with the stage at ``det``'s empty position and save their
    mean frame to ``out`` (.npy); the stage goes back where it was."""
    was = [m.position for m in det.stage]
    for motor, where in zip(det.stage, det.empty_position, strict=True):
        motor.move(where)
    done = scan.loopscan(points, count_time, det, save=False)
    for motor, where in zip(det.stage, was, strict=True):
        motor.move(where)
    frames = databus.default_bus().scan(str(done.key)).channels[det.channel_name].get_as_array()
    np.save(out, np.asarray(frames, dtype=np.float64).mean(axis=(0, 1)))
    return out


def ended_scan(bus: databus.Bus, timeout: float, **fields: Any) -> databus.ScanNode:
    """The first scan whose info has ``fields`` (and ``session``), once it has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, found = bus.find_scans(**fields)
        for key in found:
            node = bus.scan(key)
            if node.state >= databus.ScanState.ENDED:
                return node
        time.sleep(0.1)
    raise RuntimeError(f"no scan with {fields} ended within {timeout:g} s")


def crystal_map_of(node: databus.ScanNode) -> CrystalMap:
    """The crystal map a processed scan holds (its ``peaks`` info and ``peak_`` channels)."""
    peaks = node.info.get("peaks", [])
    rows = [node.channels[peak_channel(i)].get_as_array() for i in range(len(peaks))]
    npoints = len(node.channels["total"])
    return CrystalMap(
        np.array([p["x_px"] for p in peaks]),
        np.array([p["y_px"] for p in peaks]),
        np.array(rows, dtype=np.float64).reshape(len(peaks), npoints),
    )


def default_plot(path: Path, entry: str) -> str:
    """``entry``'s default plot in ``path``: its signal and shape, e.g. ``total (10, 12)``."""
    with h5py.File(path, "r", locking=False) as f:
        plot = f[entry][f[entry].attrs["default"]]
        signal = plot.attrs["signal"]
        return f"{signal} {plot[signal].shape}"


def main(argv: Sequence[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    fast, slow = (int(n) for n in args.grid.lower().split("x"))
    root = args.root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    bus = databus.connect(args.url)
    env = {**os.environ, "DATABUS_URL": bus.url, "DATABUS_PREFIX": bus.settings.prefix}
    databus.set_default_bus(bus)
    scan.set_session(args.session)
    scan.set_saving(root)
    stage = (SimMotor("robz", low=-10, high=10), SimMotor("roby", low=-10, high=10))
    det = BraggDetector(
        stage=stage, frame_shape=(args.size, args.size), frames=args.frames, seed=args.seed
    )
    background = take_background(det, 4, args.count_time, root / "background.npy")
    print(f"background: {background} (stage at {det.empty_position})", flush=True)
    processes = Processes(root / "logs", env)
    try:
        maps = f"{args.session}_maps"
        sessions = [args.session, *([maps] if args.callbacks else [])]
        processes.start("writer", "-m", "databus", "writer", "--root", str(root),
                        *(f"--session={name}" for name in sessions))  # fmt: skip
        first = max(s.number for s in bus.session(args.session).scans()) + 1
        processes.start(
            "analysis", "-m", "databus", "run", "--worker", WORKER, "--reducer", REDUCER,
            "--session", args.session, "--channels", f"image={det.channel_name}",
            "--workers", str(args.workers), "--name", args.name, "--from-scan", str(first),
        )  # fmt: skip
        with Parameters(bus, args.name, CrystalMapWorker.describe_parameters()) as parameters:
            parameters.set("background", background.read_bytes())
        if args.callbacks:
            processes.start("bridge", "-m", "databus", "bridge", "to-bluesky", "--session",
                            args.session, "--bind", "tcp://127.0.0.1:*",
                            "--serializer", "msgpack-numpy")  # fmt: skip
            address = processes.wait_for("bridge", r"-> (tcp://\S+)", args.timeout).group(1)
            processes.start("server", "-m", "examples.crystal_mapping.server", address,
                            "--background", str(background), "--session", maps,
                            "--maps", "1")  # fmt: skip
            processes.wait_for("server", "Start the server", args.timeout)
        mesh = scan.amesh(stage[0], -1, 1, fast, stage[1], -1, 1, slow, args.count_time, det)
        print(f"mesh: {mesh.key}, {fast}x{slow} points of {args.frames} frames", flush=True)
        derived = ended_scan(bus, args.timeout, session=args.session, source=mesh.key,
                             analysis=args.name)  # fmt: skip
        found = crystal_map_of(derived)
        truth = bus.scan(str(mesh.key)).info["sim_truth"]
        score = compare(truth, found)
        print(
            f"crystal map: {derived.key}: {len(found.x)} linked peaks; "
            f"{score.matched} of {score.planted} planted peaks, recall {score.recall:.3f}",
            flush=True,
        )
        report: dict[str, Any] = {
            "background": str(background),
            "mesh": mesh.key,
            "crystal_map": derived.key,
            "linked_peaks": len(found.x),
            "recall": score.recall,
        }
        written = [derived]
        if args.callbacks:
            processes.wait_exit("server", args.timeout)
            theirs = ended_scan(bus, args.timeout, session=maps, source=mesh.key)
            same = set(theirs.channels) >= set(derived.channels) and all(
                np.array_equal(channel.get_as_array(), theirs.channels[name].get_as_array())
                for name, channel in derived.channels.items()
            )
            print(f"callbacks: {theirs.key}: {'the same' if same else 'another'} map", flush=True)
            report.update(callbacks=theirs.key, same_map=same)
            written.append(theirs)
        files = [
            processes.wait_for(
                "writer", rf"finished {re.escape(n.key)} -> (.+)::(\S+) \(", args.timeout
            )
            for n in written
        ]
        processes.stop("writer")  # it holds its files until it stops
        for node, (path, entry) in zip(written, (m.groups() for m in files), strict=True):
            plot = default_plot(Path(path), entry)
            print(f"file: {path} entry {entry} of {node.key}, default plot {plot}", flush=True)
        report.update(processed_file=files[0].group(1), entry=files[0].group(2))
    finally:
        processes.stop()
        bus.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

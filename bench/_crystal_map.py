"""The crystal-mapping pipeline (examples/crystal_mapping) under ``databus run`` with 2
workers: how much of the planted truth its map recovers, and how fast it maps frames.

    python bench/_crystal_map.py            # 3 runs, medians (recall: the worst run's)
    python bench/_crystal_map.py --quick    # one smaller run, a smoke run

Each run, against a private embedded server (or ``--url``), in a session of its own: a
``BraggDetector`` sample (seeded by the run), its background counted at the empty
position and saved as a .npy (the analysis' ``background`` parameter), then two meshes
published and ended before the analysis starts: a warm-up (WARM points) and the measured
one (GRID points of FRAMES frames of SIZE x SIZE pixels). ``databus run --workers 2``
then starts from the warm-up, whose map's end marks the workers up, trackpy imported and
its numba code compiled.

- crystal_map_recall: of the (planted peak, point where it shows) pairs of the measured
  mesh, the fraction its map holds (``examples.crystal_mapping.truth.compare``).
- crystal_map_frames_per_s: the measured mesh's frames over the time from the warm-up's
  map's end to the measured map's end (server timestamps), linking and publishing the map
  included; the workers may have begun the measured mesh up to a claim each (16 points)
  before the warm-up's end. crystal_map_points_per_s: the same in grid points.
- crystal_map_peaks_matched: planted peaks with a track within 1.5 pixels, over all
  planted; crystal_map_spurious: map intensities no planted peak explains.

``crystal_map_figures(url, runs)`` gives the figures (``bench/capture.py`` includes them);
run alone, this prints one table and, as its last line, one JSON object.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _server import Figure, bench_arguments, bench_server, report, stop_process

import databus
from databus import scan
from databus.clients.analysis import Parameters
from databus.sim import BraggDetector, SimMotor

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # as `databus run`, started in ROOT, has it

from examples.crystal_mapping.run_live import (  # noqa: E402
    REDUCER,
    WORKER,
    crystal_map_of,
    ended_scan,
    take_background,
)
from examples.crystal_mapping.truth import compare  # noqa: E402
from examples.crystal_mapping.worker import CrystalMapWorker  # noqa: E402

PREFIX = "benchxmap"
SIZE, QUICK_SIZE = 256, 128  # pixels a side
FRAMES = 4  # frames per point
GRID, QUICK_GRID = (20, 15), (10, 8)  # fast x slow points
WARM = (8, 4)  # the warm-up mesh: two claims of 16 points
END_S = 300.0  # the longest a map may take
# name: (unit, target, comparison)
FIGURES: dict[str, Figure] = {
    "crystal_map_recall": ("", 0.95, ">="),
    "crystal_map_frames_per_s": ("frames/s", None, ""),
    "crystal_map_points_per_s": ("points/s", None, ""),
    "crystal_map_peaks_matched": ("", None, ""),
    "crystal_map_spurious": ("", None, ""),
}
WORST = ("crystal_map_recall", "crystal_map_peaks_matched")


def one_run(url: str, run: int, quick: bool) -> dict[str, float]:
    """Every figure once, in session ``bench_xmap_<run>``."""
    (fast, slow), size = (QUICK_GRID, QUICK_SIZE) if quick else (GRID, SIZE)
    session, name = f"bench_xmap_{run}", f"xmap{run}"
    bus = databus.connect(url, prefix=PREFIX)
    databus.set_default_bus(bus)
    scan.set_session(session)
    stage = (SimMotor("robz", low=-10, high=10), SimMotor("roby", low=-10, high=10))
    det = BraggDetector(stage=stage, frame_shape=(size, size), frames=FRAMES, seed=run)
    env = {**os.environ, "DATABUS_URL": url, "DATABUS_PREFIX": PREFIX}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            background = take_background(det, 4, 0, Path(tmp) / "background.npy")
            with Parameters(bus, name, CrystalMapWorker.describe_parameters()) as parameters:
                parameters.set("background", background.read_bytes())
        warm = scan.amesh(stage[0], -1, 1, WARM[0], stage[1], -1, 1, WARM[1], 0, det, save=False)
        mesh = scan.amesh(stage[0], -1, 1, fast, stage[1], -1, 1, slow, 0, det, save=False)
        first = str(bus.scan(str(warm.key)).number)
        command = [sys.executable, "-m", "databus", "run", "--worker", WORKER, "--reducer",
                   REDUCER, "--session", session, "--channels", f"image={det.channel_name}",
                   "--workers", "2", "--name", name, "--from-scan", first]  # fmt: skip
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                warmed = ended_scan(bus, END_S, session=session, source=warm.key, analysis=name)
                mapped = ended_scan(bus, END_S, session=session, source=mesh.key, analysis=name)
            except BaseException:
                log.seek(0)
                sys.stderr.write(log.read()[-4000:])
                raise
            finally:
                stop_process(proc, 30)
        if warmed.ended is None or mapped.ended is None:
            raise RuntimeError(f"{mapped.key} or {warmed.key} has no end time")
        seconds = mapped.ended - warmed.ended
        score = compare(bus.scan(str(mesh.key)).info["sim_truth"], crystal_map_of(mapped))
    finally:
        scan.set_session(None)
        databus.set_default_bus(None)
        bus.close()
    points = fast * slow
    return {
        "crystal_map_recall": score.recall,
        "crystal_map_frames_per_s": points * FRAMES / seconds,
        "crystal_map_points_per_s": points / seconds,
        "crystal_map_peaks_matched": score.matched / score.planted,
        "crystal_map_spurious": float(score.spurious),
    }


def crystal_map_figures(url: str, runs: int, quick: bool = False) -> dict[str, float]:
    """Each figure of ``FIGURES`` over ``runs`` runs against the server at ``url``: the
    median, or the worst run's for the recall and the peaks matched."""
    results = [one_run(url, run, quick) for run in range(runs)]
    return {k: (min if k in WORST else statistics.median)([r[k] for r in results]) for k in FIGURES}


def main() -> int:
    args = bench_arguments(__doc__, "runs").parse_args()
    runs = args.runs or (1 if args.quick else 3)
    started = time.monotonic()
    with bench_server(args.url) as url:
        out = crystal_map_figures(url, runs, args.quick)
    (fast, slow), size = (QUICK_GRID, QUICK_SIZE) if args.quick else (GRID, SIZE)
    print(
        f"databus crystal-map bench: {runs} run(s), medians (recall: the worst); "
        f"{fast}x{slow} points of {FRAMES} uint16 {size}x{size} frames, 2 workers; "
        f"{time.monotonic() - started:.0f} s"
    )
    return report(FIGURES, out, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())

"""A simulated beamline for demos and tests: motors, counters and a 2D detector.

Counters read from a ``PointContext`` (the scanned motors' positions, the elapsed time and
the count time), so a scan of ``robz`` through ``sim_ct_gauss_noise`` draws a peak of counts
over a background at robz = 0. Counters give what a detector could: counts are whole and
never negative (Poisson noise), and so are the detector's pixels. ``sim_det`` makes
diffraction-like frames and either hands them to the scan inline or writes them to its own
HDF5 file and hands back ``FileRef``s (a lima channel). ``BraggDetector`` looks at a sample
of crystals on a two-motor stage, several frames per point, for crystal mapping; the peaks
it planted are in the scan info (``sim_truth``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._encoding import FileRef


@dataclasses.dataclass
class PointContext:
    """What counters see at one point: scanned motor positions, time since the scan
    started and the count time, all in seconds and motor units."""

    index: int
    positions: dict[str, float]
    elapsed: float
    count_time: float


class SimMotor:
    """A motor with a position, limits and a speed (units per second; None moves at once).
    ``move`` outside the limits raises ValueError naming the motor and its limits."""

    def __init__(
        self,
        name: str,
        position: float = 0.0,
        low: float = -math.inf,
        high: float = math.inf,
        speed: float | None = None,
        unit: str = "mm",
    ) -> None:
        self.name, self.low, self.high, self.speed, self.unit = name, low, high, speed, unit
        self._position = float(position)

    def __repr__(self) -> str:
        return f"<SimMotor {self.name} at {self._position:g} {self.unit}>"

    @property
    def position(self) -> float:
        return self._position

    def move(self, target: float) -> None:
        """Go to ``target``, taking ``distance / speed`` seconds."""
        target = float(target)
        if not (self.low <= target <= self.high):
            raise ValueError(
                f"motor {self.name}: {target:g} is outside its limits [{self.low:g}, {self.high:g}]"
            )
        if self.speed:
            time.sleep(abs(target - self._position) / self.speed)
        self._position = target


class SimCounter:
    """A scalar counter read once per point (``controller:name`` is its channel name)."""

    dtype = "float64"
    unit: str | None = None

    def __init__(self, name: str, controller: str = "simulation", seed: int | None = None) -> None:
        self.name, self.controller = name, controller
        self.rng = np.random.default_rng(seed)

    @property
    def channel_name(self) -> str:
        return f"{self.controller}:{self.name}"

    def read(self, ctx: PointContext) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.channel_name}>"


class GaussNoiseCounter(SimCounter):
    """Counts of a gaussian peak over a flat background, as a detector gives them: the
    expected counts at the scanned motors' positions are ``background`` plus ``height``
    times a gaussian (``center``, ``fwhm``, in motor units), and the counter returns a
    Poisson draw of them, so every reading is a whole number of counts >= 0 (published as
    float64, like BLISS's simulation counter). Counts are per point, whatever the count time.

    background: counts per point far from the peak (default 200). The online analysis of
        BLISS's data-flow documentation stops a scan once the signal falls under half the
        maximum seen; that only waits for the peak if the background stays above half its
        own highest fluctuation, which a background of about 150 counts or more ensures.
    noise: an extra gaussian jitter (standard deviation, counts) of the expected counts
        before they are counted, e.g. beam intensity fluctuations; 0 (the default) leaves
        only the counting (Poisson) noise. The jittered expectation is cut at 0.
    seed: the random generator's seed; the same seed gives the same counts.
    """

    def __init__(
        self,
        name: str = "sim_ct_gauss_noise",
        *,
        center: float = 0.0,
        fwhm: float = 2.0,
        height: float = 1000.0,
        background: float = 200.0,
        noise: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if background < 0 or height < 0 or noise < 0:
            raise ValueError(
                f"counter {name}: background, height and noise are counts >= 0, "
                f"not {background=}, {height=}, {noise=}"
            )
        super().__init__(name, seed=seed)
        self.center, self.sigma, self.height = center, fwhm / 2.3548, height
        self.background, self.noise = background, noise

    def expected(self, positions: dict[str, float]) -> float:
        """The mean counts at ``positions`` (motor name -> position): background + peak."""
        r2 = sum((x - self.center) ** 2 for x in positions.values())
        return self.background + self.height * math.exp(-r2 / (2 * self.sigma**2))

    def read(self, ctx: PointContext) -> float:
        lam = self.expected(ctx.positions)
        if self.noise:
            lam = max(lam + self.rng.normal(0, self.noise), 0.0)
        return float(self.rng.poisson(lam))


class DiodeCounter(SimCounter):
    """A photodiode's reading: a slowly varying signal (80 to 120) with gaussian noise of 1,
    never negative."""

    def read(self, ctx: PointContext) -> float:
        x = next(iter(ctx.positions.values()), ctx.elapsed)
        return max(float(100 + 20 * math.sin(x) + self.rng.normal(0, 1)), 0.0)


class MonitorCounter(SimCounter):
    """Beam monitor counts: Poisson around 1e5 per second of count time."""

    dtype = "int64"
    unit = "counts"

    def read(self, ctx: PointContext) -> int:
        return int(self.rng.poisson(1e5 * max(ctx.count_time, 1e-3)))


class ElapsedTimeCounter(SimCounter):
    """Seconds since the scan started."""

    unit = "s"

    def __init__(self) -> None:
        super().__init__("elapsed_time", controller="timer")

    def read(self, ctx: PointContext) -> float:
        return ctx.elapsed


class SimDetector:
    """A 2D detector making diffraction-like frames: dark current and air scattering,
    powder rings, Bragg spots that light up at some motor positions, Poisson noise.

    mode: ``inline`` (frames go into the bus) or ``file`` (frames go to an HDF5 file in
        ``directory`` and the bus gets ``FileRef``s: a lima channel).
    """

    def __init__(
        self,
        name: str = "sim_det",
        shape: tuple[int, ...] = (1024, 1024),
        dtype: Any = "uint16",
        mode: Literal["inline", "file"] = "inline",
        directory: str | Path | None = None,
        seed: int = 7,
    ) -> None:
        if mode not in ("inline", "file"):
            raise ValueError(f"detector {name}: mode must be 'inline' or 'file', not {mode!r}")
        self.name, self.shape, self.dtype, self.mode = name, tuple(shape), np.dtype(dtype), mode
        self.directory = Path(directory) if directory is not None else None
        self.rng = np.random.default_rng(seed)
        self._file: Any = None
        self._count = 0
        self._make_scene()

    def _make_scene(self) -> None:
        """What the frames show: their expected counts before the noise (subclasses show
        another sample)."""
        h, w = self.shape
        y, x = np.ogrid[:h, :w]
        r = np.hypot(y - h / 2, x - w / 2)
        scale = min(h, w) / 1024
        base = 8.0 + 60.0 * np.exp(-r / (200 * scale))  # dark current + air scattering
        for radius, intensity in ((150, 120.0), (260, 80.0), (340, 60.0), (430, 30.0)):
            base += intensity * np.exp(-((r - radius * scale) ** 2) / (2 * (3 * scale) ** 2))
        self._background = base
        n_spots = 12
        self._spots = [
            (
                self.rng.uniform(0.1, 0.9) * h,
                self.rng.uniform(0.1, 0.9) * w,
                self.rng.uniform(-4, 4),
            )
            for _ in range(n_spots)
        ]
        self._y, self._x, self._scale = y, x, scale

    @property
    def channel_name(self) -> str:
        return f"{self.name}:image"

    def scan_info(
        self, motors: Sequence[SimMotor], positions: np.ndarray | None, npoints: int
    ) -> dict[str, Any]:
        """What the detector adds to the info of a scan of ``motors`` through
        ``positions`` (one row per point; None: the motors stay): nothing here."""
        return {}

    def frame(self, ctx: PointContext) -> np.ndarray:
        """One frame at the motor positions of ``ctx``."""
        position = next(iter(ctx.positions.values()), 0.0)
        lam = self._background.copy()
        for sy, sx, where in self._spots:
            if abs(position - where) < 0.5:  # the crystal is in Bragg condition
                lam += 3000 * np.exp(
                    -((self._y - sy) ** 2 + (self._x - sx) ** 2) / (2 * (2 * self._scale) ** 2)
                )
        frame = self.rng.poisson(lam * max(ctx.count_time, 1e-3) * 10)
        info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        if info is not None:
            frame = np.clip(frame, info.min, info.max)
        return frame.astype(self.dtype)

    # ------------------------------------------------------------------ file mode

    def open_file(self, path: str | Path, npoints: int | None) -> None:
        """Start writing frames to ``path`` (HDF5, SWMR so readers can follow)."""
        import h5py

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(path, "w", libver="latest")
        self._dataset = self._file.create_dataset(
            "entry/data/data",
            shape=(0, *self.shape),
            maxshape=(None, *self.shape),
            dtype=self.dtype,
            chunks=(1, *self.shape),
        )
        self._file.swmr_mode = True
        self._path = str(Path(path).absolute())  # readers refuse relative references
        self._count = 0

    def store(self, frame: np.ndarray) -> FileRef:
        """Append ``frame`` to the file; the reference the bus gets instead of it."""
        ds = self._dataset
        ds.resize(self._count + 1, axis=0)
        ds[self._count] = frame
        ds.flush()
        self._count += 1
        return FileRef(self._path, ds.name, self._count - 1, self._count)

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __repr__(self) -> str:
        return f"<SimDetector {self.name} {self.shape} {self.dtype} {self.mode}>"


@dataclasses.dataclass(frozen=True)
class BraggPeak:
    """A Bragg peak on the detector: a 2D gaussian centred at ``x_px`` (along a row) and
    ``y_px`` (down the rows; pixel centres are whole numbers), ``sigma_px`` wide, holding
    ``intensity`` counts per frame."""

    x_px: float
    y_px: float
    intensity: float
    sigma_px: float


@dataclasses.dataclass(frozen=True)
class Crystal:
    """A grain of the sample: a disc of ``radius`` around ``center`` (in the units of the
    stage's two motors) that casts its ``peaks`` on the detector while the beam is on it."""

    center: tuple[float, float]
    radius: float
    peaks: tuple[BraggPeak, ...]

    def lit(self, where: tuple[float, float]) -> bool:
        """True if the beam at stage position ``where`` is on this crystal."""
        return math.hypot(where[0] - self.center[0], where[1] - self.center[1]) <= self.radius


class BraggDetector(SimDetector):
    """A 2D detector behind a sample of a few crystals on a two-motor ``stage``, as in a
    crystal-mapping mesh: a frame is a smooth background (``dark`` counts plus ``air``
    scattering falling off from the centre) and the Bragg peaks of the crystals under the
    beam, with Poisson noise. A point is ``frames`` exposures, so the channel's points are
    ``(frames, height, width)`` blocks; counts are per frame, whatever the count time.

    The sample comes from ``seed`` (same seed, same crystals, peaks and noise):
    ``crystals`` discs lying in ``area`` (stage units, ``((x0, x1), (y0, y1))``), each
    casting ``peaks`` peaks of ``sigma_px`` pixels and ``intensity`` (low, high) counts per
    frame, at least ``spacing_px`` from each other and from the frame's edges.
    ``empty_position`` is a stage position on no crystal (its frames are the background
    alone). A scan gets the truth in its info, ``sim_truth`` (``scan_info``).
    """

    def __init__(
        self,
        name: str = "sim_det",
        *,
        stage: Sequence[SimMotor],
        frame_shape: tuple[int, int] = (128, 128),
        frames: int = 4,
        crystals: int = 3,
        peaks: int = 4,
        area: tuple[tuple[float, float], tuple[float, float]] = ((-1.0, 1.0), (-1.0, 1.0)),
        intensity: tuple[float, float] = (2000.0, 10000.0),
        sigma_px: float = 1.5,
        spacing_px: float = 16.0,
        dark: float = 10.0,
        air: float = 40.0,
        dtype: Any = "uint16",
        mode: Literal["inline", "file"] = "inline",
        directory: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if len(stage) != 2:
            raise ValueError(f"detector {name}: the stage is two motors, got {list(stage)!r}")
        if len(frame_shape) != 2 or min(frame_shape) < 1 or min(frames, crystals) < 1 or peaks < 0:
            raise ValueError(
                f"detector {name}: frame_shape is (height, width), frames and crystals >= 1, "
                f"peaks >= 0; got {frame_shape=}, {frames=}, {crystals=}, {peaks=}"
            )
        if not 0 < intensity[0] <= intensity[1] or sigma_px <= 0 or dark < 0 or air < 0:
            raise ValueError(
                f"detector {name}: intensity is (low, high) counts with 0 < low <= high, "
                f"sigma_px > 0, dark and air >= 0; got {intensity=}, {sigma_px=}, {dark=}, {air=}"
            )
        self.stage = tuple(stage)
        self.frames, self.frame_shape = frames, (int(frame_shape[0]), int(frame_shape[1]))
        self._crystal_count, self._peak_count, self._area = crystals, peaks, area
        self._intensity, self._sigma, self._spacing = intensity, sigma_px, spacing_px
        self._dark, self._air = dark, air
        self.seed = seed
        self.crystals: tuple[Crystal, ...] = ()
        self.empty_position: tuple[float, float] = (0.0, 0.0)
        super().__init__(name, (frames, *self.frame_shape), dtype, mode, directory, seed)

    def _make_scene(self) -> None:
        h, w = self.frame_shape
        (x0, x1), (y0, y1) = self._area
        extent = min(abs(x1 - x0), abs(y1 - y0))
        spots: list[tuple[float, float]] = []
        made = []
        for _ in range(self._crystal_count):
            radius = float(self.rng.uniform(0.15, 0.3) * extent)
            center = (float(self.rng.uniform(x0, x1)), float(self.rng.uniform(y0, y1)))
            cast = []
            for _ in range(self._peak_count):
                x, y = self._free_spot(spots, self._spacing)
                counts = float(self.rng.uniform(*self._intensity))
                cast.append(BraggPeak(x, y, counts, float(self._sigma)))
            made.append(Crystal(center, radius, tuple(cast)))
        self.crystals = tuple(made)
        self.empty_position = self._emptiest(self._area)
        y, x = np.mgrid[:h, :w]
        r = np.hypot(y - (h - 1) / 2, x - (w - 1) / 2)
        self._background = self._dark + self._air * np.exp(-r / (min(h, w) / 4))
        self._lights = [
            sum(
                (
                    p.intensity / (2 * math.pi * p.sigma_px**2)
                    * np.exp(-((x - p.x_px) ** 2 + (y - p.y_px) ** 2) / (2 * p.sigma_px**2))
                    for p in crystal.peaks
                ),
                np.zeros((h, w)),
            )
            for crystal in self.crystals
        ]  # fmt: skip

    def _free_spot(self, taken: list[tuple[float, float]], spacing: float) -> tuple[float, float]:
        """A peak position ``spacing`` pixels from the edges and from every one ``taken``
        (added to it); ValueError when the frame has no room left."""
        h, w = self.frame_shape
        for _ in range(10_000):
            x = float(self.rng.uniform(spacing, w - 1 - spacing))
            y = float(self.rng.uniform(spacing, h - 1 - spacing))
            if all(math.hypot(x - tx, y - ty) >= spacing for tx, ty in taken):
                taken.append((x, y))
                return x, y
        raise ValueError(
            f"detector {self.name}: {len(taken) + 1} peaks do not fit a {w}x{h} frame "
            f"{spacing:g} pixels apart; ask for fewer crystals or peaks, or a smaller spacing_px"
        )

    def _emptiest(
        self, area: tuple[tuple[float, float], tuple[float, float]]
    ) -> tuple[float, float]:
        """The position of ``area`` farthest from every crystal's rim (on a 41 x 41
        grid); ValueError if the crystals cover it all."""
        (x0, x1), (y0, y1) = area
        best, clearance = (x0, y0), -math.inf
        for x in np.linspace(x0, x1, 41):
            for y in np.linspace(y0, y1, 41):
                room = min(math.hypot(x - c.center[0], y - c.center[1]) - c.radius
                           for c in self.crystals)  # fmt: skip
                if room > clearance:
                    best, clearance = (float(x), float(y)), room
        if clearance <= 0:
            raise ValueError(
                f"detector {self.name}: the crystals cover the whole area {area}; "
                f"ask for fewer crystals or a larger area"
            )
        return best

    def where(self, positions: dict[str, float]) -> tuple[float, float]:
        """The stage position: each stage motor's from ``positions`` (motor name ->
        position, a scan's) if there, else where the motor is."""
        x, y = (positions.get(m.name, m.position) for m in self.stage)
        return float(x), float(y)

    def frame(self, ctx: PointContext) -> np.ndarray:
        """The ``frames`` exposures at the stage position of ``ctx``."""
        where = self.where(ctx.positions)
        lam = self._background
        for crystal, light in zip(self.crystals, self._lights, strict=True):
            if crystal.lit(where):
                lam = lam + light
        counts = self.rng.poisson(lam, size=self.shape)
        if self.dtype.kind in "iu":
            counts = np.minimum(counts, np.iinfo(self.dtype).max)
        return counts.astype(self.dtype)

    def scan_info(
        self, motors: Sequence[SimMotor], positions: np.ndarray | None, npoints: int
    ) -> dict[str, Any]:
        """``sim_truth``: the crystals, and each planted peak (``x_px``, ``y_px``,
        ``intensity`` per frame, ``sigma_px``, its ``crystal``) with the ``points`` of the
        scan where it shows; ``empty_points`` (no crystal), ``empty_position``."""
        names = [m.name for m in motors]
        rows: list[dict[str, float]] = (
            [{} for _ in range(npoints)]
            if positions is None
            else [dict(zip(names, map(float, row), strict=True)) for row in positions]
        )
        where = [self.where(row) for row in rows]
        lit = [[i for i, w in enumerate(where) if c.lit(w)] for c in self.crystals]
        peaks = [
            {**dataclasses.asdict(p), "crystal": k, "points": lit[k]}
            for k, crystal in enumerate(self.crystals)
            for p in crystal.peaks
        ]
        truth = {
            "detector": self.channel_name,
            "seed": self.seed,
            "stage": [m.name for m in self.stage],
            "frames_per_point": self.frames,
            "crystals": [{"center": list(c.center), "radius": c.radius} for c in self.crystals],
            "peaks": peaks,
            "empty_points": [
                i for i, w in enumerate(where) if not any(c.lit(w) for c in self.crystals)
            ],
            "empty_position": list(self.empty_position),
        }
        return {"sim_truth": truth}


#: The simulated beamline's devices, by the names BLISS demos use.
robz = SimMotor("robz", low=-100, high=100)
roby = SimMotor("roby", low=-100, high=100)
robx = SimMotor("robx", low=-100, high=100)
sim_ct_gauss_noise = GaussNoiseCounter()
diode = DiodeCounter("diode")
mon = MonitorCounter("mon")
elapsed_time = ElapsedTimeCounter()
sim_det = SimDetector()

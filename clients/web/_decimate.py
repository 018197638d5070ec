"""What a screen can show, computed on the server so the page gets little: the min/max
envelope of a long series per pixel column, a frame shrunk to the display and turned
into 8-bit levels, a mesh scan's points laid out as a map. Pure numpy, no I/O."""

from __future__ import annotations

import numpy as np

#: The 8-bit code of a pixel with no value (NaN: a mesh point not measured yet); levels use
#: 1..255.
NO_VALUE = 0


def bin_size(planned: int, points: int, width: int) -> int:
    """Points per bin for a plot ``width`` pixels wide: 1 (every point sent) while the
    scan fits in two points per pixel, else one bin per pixel of the ``planned`` points;
    without a plan (0), a power of two that keeps the ``points`` so far within ``width``
    bins, so bins only change when the scan doubles."""
    if width < 1:
        raise ValueError(f"a plot is at least 1 pixel wide, got {width!r}")
    if planned > 0:
        return 1 if planned <= 2 * width else -(-planned // width)
    if points <= 2 * width:
        return 1
    return 1 << int(np.ceil(np.log2(points / width)))


def envelope(columns: dict[str, np.ndarray], size: int, first: int) -> dict[str, np.ndarray]:
    """``columns`` (series of equal length starting at point ``first``, a multiple of
    ``size``) as bins of ``size`` points, each bin two rows: every series' minimum then
    its maximum (NaN ignored), what one pixel column can show. ``index`` is added: each
    bin's first and last point number. ``size`` 1 gives the points themselves."""
    n = min((len(v) for v in columns.values()), default=0)
    if size == 1:
        out = {name: np.asarray(v[:n], dtype=np.float64) for name, v in columns.items()}
        out["index"] = np.arange(first, first + n, dtype=np.float64)
        return out
    starts = np.arange(0, n, size, dtype=np.int64)
    ends = np.minimum(starts + size, n) - 1
    out = {"index": np.column_stack([starts, ends]).ravel().astype(np.float64) + first}
    for name, values in columns.items():
        series = np.asarray(values[:n], dtype=np.float64)
        if n == 0:
            out[name] = series
            continue
        with np.errstate(invalid="ignore"):
            low, high = np.fmin.reduceat(series, starts), np.fmax.reduceat(series, starts)
        out[name] = np.column_stack([low, high]).ravel()
    return out


def shrink(frame: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int]:
    """``frame`` reduced by one integer factor until it fits ``height`` x ``width``, each
    block giving its maximum (a one-pixel Bragg spot stays visible); (image, factor)."""
    if frame.ndim != 2:
        raise ValueError(f"a frame to shrink is 2D, got shape {frame.shape}")
    if height < 1 or width < 1:
        raise ValueError(f"a display is at least 1 x 1 pixel, got {height} x {width}")
    h, w = frame.shape
    factor = max(1, -(-h // height), -(-w // width))
    if factor == 1:
        return frame, 1
    h2, w2 = h // factor, w // factor
    if h2 == 0 or w2 == 0:
        return frame[::factor, ::factor], factor
    blocks = frame[: h2 * factor, : w2 * factor].reshape(h2, factor, w2, factor)
    return blocks.max(axis=(1, 3)), factor


def auto_levels(image: np.ndarray) -> tuple[float, float]:
    """The lowest and highest finite value of ``image`` ((0, 1) if it has none)."""
    finite = image[np.isfinite(image)] if image.dtype.kind == "f" else image
    if finite.size == 0:
        return 0.0, 1.0
    return float(finite.min()), float(finite.max())


def to_8bit(image: np.ndarray, low: float, high: float, *, log: bool = False) -> np.ndarray:
    """``image`` as uint8 codes 1..255 spread over ``low``..``high`` (clipped; ``log``:
    over their logarithms, values <= 0 at the bottom), NaN as ``NO_VALUE``."""
    values = np.asarray(image, dtype=np.float32)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.log10(np.where(values > 0, values, np.nan))
            nan_in = ~np.isfinite(np.asarray(image, dtype=np.float32))
        low, high = np.log10(max(low, 1e-12)), np.log10(max(high, 1e-12))
    else:
        nan_in = np.isnan(values)
    span = (high - low) or 1.0
    scaled = np.clip((values - low) * (254.0 / span), 0, 254)
    codes = np.nan_to_num(scaled, nan=0.0).astype(np.uint8) + 1
    codes[nan_in] = NO_VALUE
    return codes


#: (low, high) motor positions a mesh map's columns or rows span.
Span = tuple[float, float]


def mesh_grid(
    values: np.ndarray,
    shape: tuple[int, int],
    fast: np.ndarray | None = None,
    slow: np.ndarray | None = None,
    spans: tuple[Span, Span] | None = None,
) -> np.ndarray:
    """A mesh scan's ``values`` as a (rows, cols) = ``shape`` map, NaN where no point is.
    Given the ``fast`` and ``slow`` motors' positions at each point, a point goes to the
    cell nearest its position, ``spans`` (fast, slow: the first and last cell's
    positions; None: the positions' range so far) cut into cols and rows, so a snake or
    an irregular mesh draws where it was measured; without them, in point order."""
    rows, cols = shape
    grid = np.full(rows * cols, np.nan)
    if fast is None or slow is None:
        n = min(len(values), grid.size)
        grid[:n] = values[:n]
        return grid.reshape(rows, cols)
    n = min(len(values), len(fast), len(slow))
    values, fast, slow = values[:n], np.asarray(fast[:n]), np.asarray(slow[:n])
    known = np.isfinite(fast) & np.isfinite(slow)
    values, fast, slow = values[known], fast[known], slow[known]
    if len(values) == 0:
        return grid.reshape(rows, cols)
    fast_span, slow_span = spans or ((fast.min(), fast.max()), (slow.min(), slow.max()))
    col = _cells(fast, fast_span, cols)
    row = _cells(slow, slow_span, rows)
    grid[row * cols + col] = values  # a cell measured twice shows its last point
    return grid.reshape(rows, cols)


def _cells(positions: np.ndarray, span: Span, count: int) -> np.ndarray:
    """The index, 0 .. ``count`` - 1, of the cell nearest each position along ``span``."""
    first, last = span
    if count == 1 or first == last:
        return np.zeros(len(positions), dtype=np.int64)
    where = np.rint((positions - first) / (last - first) * (count - 1))
    return np.clip(where, 0, count - 1).astype(np.int64)

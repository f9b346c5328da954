"""Time series: reading a CSV, a regular time index, gaps, scaling, windows, calendar covariates.

Shape legend: T time steps, C target columns, K covariate columns, F = C + K input features,
N windows, ``L_in`` = ``input_chunk_length``, ``L_out`` = ``output_chunk_length`` (Darts' words).

A `TimeSeries` is regular: its timestamps lie on one frequency's grid, sorted, without
duplicates. Timestamps missing from the grid (gaps) and missing values become NaN and are then
filled by an explicit policy (``fill``):

    "refuse"       (default) raise RnnkitError naming the gaps and missing values
    "interpolate"  linear interpolation in time (leading/trailing NaN are refused)
    "ffill"        carry the last value forward (leading NaN are refused)

`Scaler` is fitted on the training part only and is stored in a run as ``scaler.json``.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rnnkit.data.bounded import DECOMPRESSED, list_names, message_of, read_capped
from rnnkit.errors import RnnkitError, shorten

MAX_CSV_BYTES = 256 << 20
"""Bytes of one CSV file after decompression (256 MiB): a NAB series is 0.1 to 1 MB, a year of
one-minute readings of ten columns about 40 MB. pandas needs several times the file's size."""
MAX_TIMESTAMP_CHARS = 64
"""Characters of one cell of the time column: "2024-01-31T12:00:00.000000+05:30" is 32, and
pandas' mixed-format parser takes minutes over a 2 MB cell."""
FILL_POLICIES = ("refuse", "interpolate", "ffill")
CALENDAR = ("month", "dayofweek", "hour")
_PERIODS = {"month": 12, "dayofweek": 7, "hour": 24}


@dataclass
class TimeSeries:
    """A regular series: ``index`` (T,) timestamps, ``values`` (T, C), ``covariates`` (T, K).

    ``report`` records what reading found: rows, frequency, gaps and missing values, the fill.
    """

    index: pd.DatetimeIndex
    values: np.ndarray
    columns: list[str]
    freq: str
    covariates: np.ndarray | None = None
    covariate_names: list[str] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: slice) -> TimeSeries:
        """A contiguous part (a slice of time steps), e.g. ``series[:120]``."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise RnnkitError("a TimeSeries is cut with a contiguous slice, e.g. series[:120]")
        cov = None if self.covariates is None else self.covariates[key]
        return replace(self, index=self.index[key], values=self.values[key], covariates=cov)

    def before(self, timestamp: str | pd.Timestamp) -> TimeSeries:
        """The part strictly before ``timestamp``."""
        return self[: self.position(timestamp)]

    def position(self, timestamp: str | pd.Timestamp) -> int:
        """The index of the first step at or after ``timestamp``."""
        try:
            ts = pd.Timestamp(timestamp)
        except (ValueError, TypeError):
            raise RnnkitError(f"cannot parse {shorten(timestamp)} as a timestamp") from None
        return int(self.index.searchsorted(ts))

    def future_index(self, n: int) -> pd.DatetimeIndex:
        """The ``n`` timestamps after the last one."""
        return pd.date_range(self.index[-1], periods=n + 1, freq=self.freq)[1:]

    def to_frame(self) -> pd.DataFrame:
        """The targets as a DataFrame indexed by time."""
        return pd.DataFrame(self.values, index=self.index, columns=self.columns)


def read_csv(
    path: str | os.PathLike,
    time_col: str,
    targets: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    fill: str = "refuse",
    regular: bool = True,
) -> TimeSeries:
    """Read a CSV with a time column, target column(s) and optional covariate columns.

    ``targets`` None takes every column except the time column and the covariates.
    ``regular=False`` takes the rows as the time steps, in file order, as they are (no sorting,
    no grid; duplicated or irregular timestamps are kept): what a streaming detector sees.

    Raises:
        RnnkitError: missing file or column, unparseable or duplicated timestamps,
            non-numeric values, an irregular index, or gaps/missing values with ``fill="refuse"``.
    """
    path = Path(path)
    if not path.is_file():
        raise RnnkitError(f"CSV file {path} does not exist; check the path")
    if path.suffix.lower() in (".zip", ".zst", ".tar"):
        raise RnnkitError(f"{path}: rnnkit reads CSV files plain or compressed as "
                          f"{', '.join(DECOMPRESSED)}; decompress it first")  # fmt: skip
    data = read_capped(path, MAX_CSV_BYTES, "give fewer rows or columns")
    try:
        frame = pd.read_csv(io.BytesIO(data), compression=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise RnnkitError(f"cannot read {path} as CSV: {message_of(err)}") from None
    if frame.empty:
        raise RnnkitError(f"{path} has a header but no data rows; give a CSV with data")
    return from_frame(frame, time_col, targets, covariates, fill, str(path), regular)


def from_frame(
    frame: pd.DataFrame,
    time_col: str,
    targets: Sequence[str] | None = None,
    covariates: Sequence[str] = (),
    fill: str = "refuse",
    source: str = "the data",
    regular: bool = True,
) -> TimeSeries:
    """A `TimeSeries` from a DataFrame with a time column; see `read_csv`."""
    if fill not in FILL_POLICIES:
        raise RnnkitError(f"fill must be one of {', '.join(FILL_POLICIES)}, got {fill!r}")
    targets = _choose_targets(frame, time_col, targets, covariates, source)
    index = _parse_times(frame[time_col], time_col, source)
    data = _numeric(frame[targets + list(covariates)], source)
    data.index = index
    if not regular:
        return _rows_as_steps(data, targets, list(covariates), fill, source)
    data = data.sort_index()
    _refuse_duplicates(data.index, source)
    freq = detect_frequency(data.index, source)
    grid = pd.date_range(data.index[0], data.index[-1], freq=freq)
    off_grid = data.index.difference(grid)
    if len(off_grid):
        raise RnnkitError(
            f"{source}: {len(off_grid)} timestamp(s) do not fall on the {freq} grid (first: "
            f"{off_grid[0]}); resample the data to a regular frequency first"
        )
    gaps = grid.difference(data.index)
    data = data.reindex(grid)
    report = _report(data, len(frame), freq, fill, gaps=[str(t) for t in gaps])
    data = fill_missing(data, fill, source, report)
    cov = data[list(covariates)].to_numpy(np.float64) if covariates else None
    return TimeSeries(grid, data[targets].to_numpy(np.float64), targets, freq, cov,
                      list(covariates), report)  # fmt: skip


def _rows_as_steps(
    data: pd.DataFrame, targets: list[str], covariates: list[str], fill: str, source: str
) -> TimeSeries:
    """The rows as they are, one time step each (``regular=False``)."""
    index = pd.DatetimeIndex(data.index)
    step = pd.Series(index[1:] - index[:-1]).mode()
    freq = pd.tseries.frequencies.to_offset(step.iloc[0]).freqstr if len(step) else "D"
    report = {**_report(data, len(data), freq, fill, gaps=[]), "regular": False}
    data = fill_missing(data.reset_index(drop=True), fill, source, report)
    cov = data[covariates].to_numpy(np.float64) if covariates else None
    return TimeSeries(index, data[targets].to_numpy(np.float64), targets, freq, cov, covariates,
                      report)  # fmt: skip


def _report(data: pd.DataFrame, rows: int, freq: str, fill: str, gaps: list[str]) -> dict[str, Any]:
    """What reading found: rows, span, frequency, gaps (first five), missing values per column."""
    missing = {str(c): int(n) for c, n in data.isna().sum().items() if n}
    span = {"start": str(data.index[0]), "end": str(data.index[-1])}
    return {"rows": rows, **span, "freq": freq, "gaps": len(gaps), "first_gaps": gaps[:5],
            "missing": missing, "fill": fill}  # fmt: skip


def _choose_targets(
    frame: pd.DataFrame,
    time_col: str,
    targets: Sequence[str] | None,
    covariates: Sequence[str],
    source: str,
) -> list[str]:
    columns = [str(c) for c in frame.columns]
    for name in [time_col, *(targets or []), *covariates]:
        if name not in columns:
            raise RnnkitError(f"{source} has no column {shorten(name)}; its columns are "
                              f"{list_names(columns)}")  # fmt: skip
    targets = list(targets) if targets else [c for c in columns if c not in (time_col, *covariates)]
    if not targets:
        raise RnnkitError(f"{source} has no target column besides {shorten(time_col)}; name one")
    return targets


def _parse_times(column: pd.Series, time_col: str, source: str) -> pd.DatetimeIndex:
    lengths = column.map(lambda v: len(v) if isinstance(v, str) else 0).to_numpy()
    if len(lengths) and lengths.max() > MAX_TIMESTAMP_CHARS:
        row = int(lengths.argmax())
        raise RnnkitError(
            f"{source}, data row {row + 1}: the time column holds {shorten(column.iloc[row])}, "
            f"too long for a timestamp (> {MAX_TIMESTAMP_CHARS} characters); use ISO dates "
            "such as 2024-01-31 12:00"
        )
    bad = column.isna()
    parsed = pd.to_datetime(column, errors="coerce", format="mixed")
    bad |= parsed.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise RnnkitError(
            f"{source}: cannot parse {shorten(column.iloc[row])} in time column "
            f"{shorten(time_col)} as a timestamp (data row {row + 1}); use ISO dates such as "
            "2024-01-31 or 2024-01-31 12:00"
        )
    return pd.DatetimeIndex(parsed)


def _numeric(data: pd.DataFrame, source: str) -> pd.DataFrame:
    out = data.apply(pd.to_numeric, errors="coerce").astype(np.float64)
    bad = out.isna() & data.notna()
    if bad.to_numpy().any():
        row, col = (int(i[0]) for i in np.nonzero(bad.to_numpy()))
        raise RnnkitError(
            f"{source}: column {shorten(data.columns[col])} holds the non-numeric value "
            f"{shorten(data.iloc[row, col])} (data row {row + 1}); fix it or leave the cell empty"
        )
    return out.reset_index(drop=True)


def _refuse_duplicates(index: pd.DatetimeIndex, source: str) -> None:
    dup = index[index.duplicated()]
    if len(dup):
        raise RnnkitError(
            f"{source}: {len(dup)} duplicated timestamp(s) (first: {dup[0]}); keep one row per "
            "timestamp (aggregate duplicates first)"
        )


def detect_frequency(index: pd.DatetimeIndex, source: str = "the data") -> str:
    """The frequency of a sorted index as a pandas alias ("MS", "QS-JAN", "D", "B", "h", ...).

    Tolerates gaps: for dates on the first (or the last) day of their month the step is the
    largest number of months dividing every difference; otherwise the most common difference,
    named as days ("D", season 7, not pandas' "24h"), business days when no date falls on a
    weekend ("B"), weeks ("W-SUN") or a duration ("h", "5min"). So a daily series with missing
    days is daily; `from_frame` then checks that every timestamp lies on that grid, and the
    grid's missing steps are gaps.
    """
    if len(index) < 3:
        raise RnnkitError(f"{source} has {len(index)} rows; a time series needs at least 3")
    with warnings.catch_warnings():  # pandas 3 warns that infer_freq will return an offset
        warnings.simplefilter("ignore")
        inferred = pd.infer_freq(index)
    if inferred is not None:
        return _alias(pd.tseries.frequencies.to_offset(inferred))
    monthly = _monthly_frequency(index)
    if monthly is not None:
        return monthly
    step = int(pd.Series(np.diff(index.as_unit("ns").asi8)).mode().iloc[0])
    day, dates = pd.Timedelta(days=1).value, index.normalize().equals(index)
    weekdays = index.dayofweek
    if dates and step == day and (weekdays < 5).all() and (np.diff(weekdays) < 0).any():
        return "B"  # weekdays only, across several weeks: business days
    if dates and step == 7 * day:
        return "W-" + ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")[weekdays[0]]
    return _alias(pd.tseries.frequencies.to_offset(pd.Timedelta(step)))


def _monthly_frequency(index: pd.DatetimeIndex) -> str | None:
    """A month-based alias ("MS"/"ME", "QS-<month>"/"QE-<month>", "YS-"/"YE-", "<k>MS"/"<k>ME")
    for dates all at midnight on the first (or all on the last) day of their month, gaps
    allowed; else None."""
    if not index.normalize().equals(index):
        return None
    if (index.day == 1).all():
        kind = "S"
    elif index.is_month_end.all():
        kind = "E"
    else:
        return None
    months = index.year * 12 + index.month - 1
    k = int(np.gcd.reduce(np.diff(months)))
    if k < 1:
        return None
    names = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
    first = int(months[0]) % 12  # 0 = January
    if k == 3:  # QS-JAN: quarters start in Jan/Apr/Jul/Oct; QE-DEC: they end in Mar/.../Dec
        return f"QS-{names[first % 3]}" if kind == "S" else f"QE-{names[9 + first % 3]}"
    if k == 12:
        return f"Y{kind}-{names[first]}"
    return f"{k if k > 1 else ''}M{kind}"


def _alias(offset: pd.DateOffset) -> str:
    """The alias of ``offset``, a whole number of days as "D" ("24h" in pandas otherwise)."""
    if isinstance(offset, pd.offsets.Tick):
        delta = pd.Timedelta(offset)
        if delta >= pd.Timedelta(days=1) and delta % pd.Timedelta(days=1) == pd.Timedelta(0):
            days = delta // pd.Timedelta(days=1)
            return "D" if days == 1 else f"{days}D"
    return offset.freqstr


def fill_missing(
    data: pd.DataFrame, fill: str, source: str, report: dict[str, Any]
) -> pd.DataFrame:
    """Fill NaN in ``data`` (T, F) by the policy ``fill``; see the module docstring."""
    if not data.isna().to_numpy().any():
        return data
    missing = ", ".join(f"{c}: {n}" for c, n in report["missing"].items())
    if fill == "refuse":
        raise RnnkitError(
            f"{source} has {report['gaps']} gap(s) in its {report['freq']} time index and missing "
            f"values ({missing}); choose a fill policy (--fill interpolate or --fill ffill)"
        )
    if fill == "interpolate":
        method = "time" if isinstance(data.index, pd.DatetimeIndex) else "linear"
        filled = data.interpolate(method=method, limit_area="inside")
    else:
        filled = data.ffill()
    if filled.isna().to_numpy().any():
        raise RnnkitError(
            f"{source}: missing values at the start or end cannot be filled by {fill!r}; "
            "drop those rows"
        )
    return filled


def calendar_features(index: pd.DatetimeIndex, names: Sequence[str]) -> np.ndarray:
    """Cyclic calendar covariates: (T,) timestamps -> (T, 2 * len(names)) sin/cos pairs."""
    unknown = [n for n in names if n not in CALENDAR]
    if unknown:
        raise RnnkitError(f"unknown calendar feature(s) {unknown}; choose from {CALENDAR}")
    columns = []
    for name in names:
        value = getattr(index, name).to_numpy(np.float64)
        if name == "month":
            value = value - 1
        angle = 2 * np.pi * value / _PERIODS[name]
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1) if columns else np.zeros((len(index), 0))


@dataclass
class Scaler:
    """Per-column standardisation (after an optional log), fitted on training rows only.

    ``transform``: (T, C) -> (T, C); ``inverse`` undoes it (monotone, so it maps quantiles).
    """

    mean: list[float]
    std: list[float]
    log: bool = False

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str], log: bool = False) -> Scaler:
        """Statistics of ``values`` (T_train, C): pass the training part only."""
        if log and (values <= 0).any():
            raise RnnkitError("the log transform needs positive values; drop --log")
        x = np.log(values) if log else values
        std = x.std(axis=0)
        for name, s in zip(columns, std):
            if not s > 0:
                raise RnnkitError(
                    f"column {name!r} is constant over the training part; nothing to forecast "
                    "(a constant series is forecast by its value)"
                )
        return cls(x.mean(axis=0).tolist(), std.tolist(), log)

    def transform(self, values: np.ndarray) -> np.ndarray:
        x = np.log(values) if self.log else values
        return (x - np.asarray(self.mean)) / np.asarray(self.std)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        x = scaled * np.asarray(self.std) + np.asarray(self.mean)
        return np.exp(x) if self.log else x

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "log": self.log}

    @classmethod
    def from_dict(cls, data: Any) -> Scaler:
        """The scaler stored by `to_dict`; RnnkitError if ``data`` is not of that shape."""
        ok = isinstance(data, dict) and isinstance(data.get("log"), bool)
        mean, std = (data.get(k) if ok else None for k in ("mean", "std"))
        ok = ok and isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std)
        ok = ok and all(_finite(m) and _finite(s) and s > 0 for m, s in zip(mean, std))
        if not ok:
            raise RnnkitError("a run's scaler is damaged (it must hold lists 'mean' and 'std' "
                              "of numbers, std > 0, and 'log' true or false); train again"
                              )  # fmt: skip
        return cls([float(m) for m in mean], [float(s) for s in std], data["log"])


def _finite(value: object) -> bool:
    """Whether ``value`` is a finite int or float (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def make_windows(
    inputs: np.ndarray, targets: np.ndarray, input_chunk_length: int, output_chunk_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of a series: X (N, L_in, F) from ``inputs`` (T, F), Y (N, L_out, C) from
    ``targets`` (T, C), N = T - L_in - L_out + 1.

    Window i reads rows ``i .. i + L_in - 1`` and its targets are the rows that follow,
    ``i + L_in .. i + L_in + L_out - 1``: no input ever sees a value it must predict.
    """
    check_window(len(inputs), input_chunk_length, output_chunk_length)
    n = len(inputs) - input_chunk_length - output_chunk_length + 1
    starts = np.arange(n)[:, None]
    x = inputs[starts + np.arange(input_chunk_length)]
    y = targets[starts + input_chunk_length + np.arange(output_chunk_length)]
    return x, y


def check_window(length: int, input_chunk_length: int, output_chunk_length: int) -> None:
    """Raise RnnkitError unless a series of ``length`` steps holds one whole window."""
    if input_chunk_length < 1 or output_chunk_length < 1:
        raise RnnkitError("input_chunk_length and output_chunk_length must be >= 1")
    need = input_chunk_length + output_chunk_length
    if length < need:
        raise RnnkitError(
            f"the series has {length} steps, shorter than one window (input_chunk_length "
            f"{input_chunk_length} + output_chunk_length {output_chunk_length} = {need}); "
            "give a longer series or shorter chunks"
        )


def log_returns(series: TimeSeries) -> TimeSeries:
    """Prices (T, C) -> log returns log(p_t / p_{t-1}) (T - 1, C), labelled by the later time.

    Raises:
        RnnkitError: a price is not positive.
    """
    if (series.values <= 0).any():
        raise RnnkitError("log returns need positive prices; check the target column")
    returns = np.diff(np.log(series.values), axis=0)
    cov = None if series.covariates is None else series.covariates[1:]
    columns = [f"{c} log return" for c in series.columns]
    return replace(series, index=series.index[1:], values=returns, columns=columns, covariates=cov)


def season_of(freq: str) -> int:
    """The usual seasonal period of a frequency: 12 monthly, 4 quarterly, 52 weekly, 7 daily,
    5 business-daily; below a day, the steps in a day (24 hourly, 288 for 5 minutes, at most
    1440); else 1."""
    offset = pd.tseries.frequencies.to_offset(freq)
    code = offset.rule_code.split("-")[0]
    periods = {"MS": 12, "ME": 12, "QS": 4, "QE": 4, "W": 52, "D": 7, "B": 5}
    if offset.n == 1 and code in periods:
        return periods[code]
    if isinstance(offset, pd.offsets.Tick):
        steps = pd.Timedelta(days=1) / pd.Timedelta(offset)
        if 1 < steps <= 1440 and steps == int(steps):
            return int(steps)
    return 1

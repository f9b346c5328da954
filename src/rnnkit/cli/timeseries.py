"""`rnnkit forecast` and `rnnkit detect`: train on a CSV and report in one go (the forecast and
its backtest, or the detections and their NAB score), with the options of `rnnkit train
forecast` and `rnnkit train anomaly`, made when first needed (the task modules import torch)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import click

from rnnkit.cli.options import DIR, loop_options, parsed, setting_options


class SpecCommand(click.Command):
    """A command whose options are those of a task's `TaskSpec` (made when first needed) and
    its own."""

    def __init__(self, task: str, own: Callable[[], list[click.Parameter]],
                 shown: dict[str, str] | None = None, **kwargs: Any):  # fmt: skip
        self.task, self.own, self.shown, self._params = task, own, shown or {}, None
        super().__init__(**kwargs)

    @property
    def params(self) -> list[click.Parameter]:
        if self._params is None:
            from rnnkit.tasks import task_spec

            spec = task_spec(self.task)
            spec = dataclasses.replace(spec, shown={**spec.shown, **self.shown})
            self._params = [*self.own(), *setting_options(spec),
                            *loop_options(spec.default_train, spec.shown)]  # fmt: skip
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        if value:
            self._params = value


def split(task: str, values: dict[str, Any]) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    """The data (the CSV, a data set's resolved, its time column and target columns), the
    other settings given, and the training-loop settings (`TrainConfig` fields, over the task's
    defaults) of ``values``."""
    from rnnkit.data import registry
    from rnnkit.tasks import task_spec
    from rnnkit.training.options import TRAIN_KEYS, parse_duration

    values = {k: v for k, v in parsed(values).items() if v is not None}
    loop = {TRAIN_KEYS[k]: values.pop(k) for k in list(values) if k in TRAIN_KEYS}
    if "max_time" in loop:
        loop["max_time"] = parse_duration(loop["max_time"])
    csv = values.pop("csv", "")
    data = [registry.resolve(csv) if csv else csv, values.pop("time_col", ""),
            values.pop("columns", [])]  # fmt: skip
    return data, values, {**asdict(task_spec(task).default_train), **loop}


def _forecast_options() -> list[click.Parameter]:
    return [
        click.Option(["--horizon"], type=click.IntRange(min=1), required=True,
                     help="Steps to forecast."),
        click.Option(["--out"], type=DIR, required=True, help="Output directory to create."),
        click.Option(["--level"], type=float, default=0.9, show_default=True,
                     help="Interval level."),
        click.Option(["--backtest-start"],
                     help="First rolling origin (a date): adds the backtest table (backtest.csv: "
                          "a row per model, MASE, sMAPE, coverage, MSIS, QL)."),
        click.Option(["--backtest-every"], type=int, default=1, show_default=True,
                     help="Steps between rolling origins."),
    ]  # fmt: skip


def forecast_run(horizon: int, out: str, level: float, backtest_start: str | None,
                 backtest_every: int, **values: Any) -> None:  # fmt: skip
    """Train a forecaster on a CSV, print the forecast with intervals, write a PNG.

    \b
    Examples:
      rnnkit data fetch airline-passengers
      rnnkit forecast --csv airline-passengers --time-col Month \\
          --target Passengers --horizon 6 --log --mode autoregressive --calendar month \\
          --backtest-start 1959-01 --out runs/airline
    """
    from rnnkit.tasks import forecast as task

    data, settings, loop = split("forecast", values)
    report = task.run(*data, horizon, out, backtest_start=backtest_start, level=level,
                      backtest_every=backtest_every, train=loop,
                      **settings)  # fmt: skip
    click.echo(task.format_report(report))


def _detect_options() -> list[click.Parameter]:
    return [
        click.Option(["--out"], type=DIR, required=True, help="Output directory to create."),
        click.Option(["--windows"],
                     help="NAB combined_windows.json: shade and score the labelled windows."),
        click.Option(["--series-key"],
                     help="The series' key in --windows.  [default: FOLDER/FILE.csv]"),
    ]  # fmt: skip


def detect_run(out: str, windows: str | None, series_key: str | None, **values: Any) -> None:
    """Detect anomalies: a forecaster learns the early part, large errors are flagged.

    \b
    Examples:
      rnnkit data fetch nab
      rnnkit detect --csv nab/realKnownCause/nyc_taxi.csv \\
          --time-col timestamp --target value --rows-as-steps \\
          --windows nab/combined_windows.json --out runs/nyc
    """
    from rnnkit.data import registry
    from rnnkit.tasks import anomaly

    data, settings, loop = split("anomaly", values)
    windows = registry.resolve(windows) if windows else windows
    report = anomaly.run(*data, out, windows=windows, series_key=series_key, train=loop,
                         **settings)  # fmt: skip
    click.echo(anomaly.format_report(report))


forecast = SpecCommand("forecast", _forecast_options, {"output_chunk_length": "--horizon"},
                       name="forecast", callback=forecast_run,
                       help=forecast_run.__doc__)  # fmt: skip
detect = SpecCommand("anomaly", _detect_options, None, name="detect", callback=detect_run,
                     help=detect_run.__doc__)  # fmt: skip

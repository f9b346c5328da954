"""Darts' RNNModel and BlockRNNModel as peers in `benchmarks.forecast` (``--darts``).

Darts is not a dependency of rnnkit: ``pip install -c constraints.txt 'darts[torch]'`` (0.48.1
with pytorch-lightning 2.6.6 installs beside torch 2.13.0, numpy 2.4 and pandas 3.1 without
changing them; see docs/forecasting.md). Each model at its default settings (vanilla RNN cell,
25 hidden units, 100 epochs, no likelihood: point forecasts) with the one argument Darts
requires, ``input_chunk_length`` = 24 (rnnkit's default), BlockRNNModel's
``output_chunk_length`` = the horizon; the values min-max scaled on the training rows, as in
Darts' own examples. Like rnnkit's, each model is trained once on the rows before the first
origin and reads the real history at every origin.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np

from rnnkit.data.timeseries import TimeSeries
from rnnkit.evaluation.backtest import Backtest, mase_scale, metrics_table

TRAINER = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False,
           "enable_checkpointing": False, "accelerator": "cpu"}  # fmt: skip


def add_darts(result: Backtest, series: TimeSeries, h: int, season: int, level: float = 0.9):
    """Add Darts' two models to ``result`` (forecasts, CPU seconds, notes) and rebuild its
    table; a model that fails keeps its row with the error as its note."""
    for name in ("RNNModel", "BlockRNNModel"):
        label, began = f"Darts {name}", time.process_time()
        try:
            result.forecasts[label] = _forecasts(name, result, series, h)
            result.notes[label] = "default settings: point forecast, no interval"
        except Exception as err:  # reported in the table, as for the classical models
            result.forecasts[label] = np.full_like(result.actual, np.nan)
            result.notes[label] = f"failed: {type(err).__name__}: {str(err)[:120]}"
        result.seconds[label] = time.process_time() - began
    scale = mase_scale(series.values[: result.origins[0]], season)
    result.table = metrics_table(result.actual, result.forecasts, scale, False, result.bounds,
                                 level, result.notes)  # fmt: skip


def _forecasts(name: str, result: Backtest, series: TimeSeries, h: int) -> np.ndarray:
    """(B, h, C) forecasts of Darts' ``name`` trained before the first origin."""
    import darts.models
    from darts import TimeSeries as DartsSeries
    from darts.dataprocessing.transformers import Scaler

    def cut(end: int) -> DartsSeries:
        return DartsSeries.from_times_and_values(series.index[:end], series.values[:end])

    extra = {"output_chunk_length": h} if name == "BlockRNNModel" else {}
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaler = Scaler().fit(cut(result.origins[0]))
        model = getattr(darts.models, name)(input_chunk_length=24, pl_trainer_kwargs=TRAINER,
                                            random_state=0, **extra)  # fmt: skip
        model.fit(scaler.transform(cut(result.origins[0])), verbose=False)
        histories = [scaler.transform(cut(p)) for p in result.origins]
        made = model.predict(n=h, series=histories, verbose=False)
    return np.stack([scaler.inverse_transform(m).values() for m in made])

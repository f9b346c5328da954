"""Scoring what a model made against what happened: rolling-origin backtests of forecasts
(`rnnkit.evaluation.backtest`) and the NAB scoring of anomaly detections
(`rnnkit.evaluation.nab`)."""

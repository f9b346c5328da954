"""Forecasting models of time series: `rnnkit.forecasting.forecaster.Forecaster` (a recurrent
network over windows of a `rnnkit.data.timeseries.TimeSeries`, with prediction intervals), which
the forecast and anomaly tasks train and load."""

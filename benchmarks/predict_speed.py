"""How fast a trained run answers: `Predictor.predict` on one sentence, and `rnnkit predict` on a
forecast run from the shell, start-up included; prints JSON.

    python -m benchmarks.predict_speed [--sentiment RUN] [--forecast RUN] [--repeats 200]

Without RUN arguments it makes one-step runs of the docs' architectures: the sentiment model of
docs/sentiment.md (`benchmarks.serve.make_runs`) and the forecaster of docs/forecasting.md's
airline example on a synthetic monthly series (speed depends on the architecture, not on the
weights). Sentiment: the median time of ``predict([sentence])`` over ``--repeats`` sentences of
5-30 words after loading (issue bar: 5 ms). Forecast: the median wall time of five
``rnnkit predict RUN --horizon 12 --json`` processes (bar: 3 s).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.serve import WORDS

#: the forecaster of docs/forecasting.md's airline example
AIRLINE = ["--input-chunk-length", "24", "--output-chunk-length", "6", "--mode", "autoregressive",
           "--log", "--calendar", "month"]  # fmt: skip


def forecast_run(root: Path) -> Path:
    """A one-step forecast run on 144 synthetic months (trained through the command line)."""
    t = np.arange(144)
    values = 100 + t + 20 * np.sin(2 * np.pi * t / 12)
    months = pd.date_range("1949-01-01", periods=144, freq="MS").strftime("%Y-%m")
    pd.DataFrame({"Month": months, "Passengers": values}).to_csv(root / "m.csv", index=False)
    run = root / "forecast"
    subprocess.run([sys.executable, "-m", "rnnkit", "train", "forecast", "--csv",
                    str(root / "m.csv"), "--time-col", "Month", "--target", "Passengers",
                    *AIRLINE, "--max-steps", "1", "--progress", "none", "--out", str(run)],
                   check=True, capture_output=True)  # fmt: skip
    return run


def sentence_ms(run: Path, repeats: int) -> dict:
    """Median and p90 ms of ``predict([sentence])`` after loading, over ``repeats`` sentences."""
    import rnnkit

    predictor = rnnkit.load(run)
    rng = random.Random(1)
    sentences = [" ".join(rng.choices(WORDS, k=rng.randint(5, 30))) for _ in range(repeats)]
    predictor.predict(sentences[:3])
    times = []
    for sentence in sentences:
        start = time.perf_counter()
        predictor.predict([sentence])
        times.append(1e3 * (time.perf_counter() - start))
    times.sort()
    return {"median_ms": round(statistics.median(times), 3),
            "p90_ms": round(times[int(0.9 * len(times))], 3), "bar_ms": 5.0}  # fmt: skip


def command_seconds(run: Path, repeats: int = 5) -> dict:
    """Median wall seconds of ``rnnkit predict RUN --horizon 12 --json`` (a new process each)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "rnnkit", "predict", str(run), "--horizon",
                               "12", "--json"], capture_output=True, text=True)  # fmt: skip
        times.append(time.perf_counter() - start)
        if done.returncode != 0 or len(done.stdout.splitlines()) != 12:
            raise SystemExit(f"rnnkit predict failed: {done.stderr.strip()}")
    return {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "bar_s": 3.0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentiment")
    parser.add_argument("--forecast")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if args.sentiment is None:
            from benchmarks.serve import make_runs

            args.sentiment = make_runs(root)["sentiment"]
        forecast = Path(args.forecast) if args.forecast else forecast_run(root)
        report = {"sentiment_predict_one": sentence_ms(Path(args.sentiment), args.repeats),
                  "forecast_command": command_seconds(forecast)}  # fmt: skip
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

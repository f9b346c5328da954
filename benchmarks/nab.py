"""NAB benchmark of `rnnkit.tasks.anomaly`: realKnownCause + artificialWithAnomaly, one JSON.

For every series: train the detector's forecaster on its first 15% (NAB's probationary period),
score every row, flag with the label-free threshold, and score the flags with NAB's standard
profile. Reported beside it: the null detector (0 by construction), a random detector (uniform
scores, seed 0) and, as NAB's scoreboard does, each detector with the one corpus-wide threshold
that maximises its score (this uses the labels). The rows are read in file order, as they come
(``regular=False``): NAB scores its detectors on the files' own rows.

    .venv/bin/python benchmarks/nab.py --data ../shared/data/anomaly/nab --out runs/nab > nab.json

``--reuse`` re-thresholds the per-series scores of an earlier run in ``--out`` (no training).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from rnnkit.data.timeseries import read_csv
from rnnkit.diagnostics.timeseries_plots import plot_anomalies
from rnnkit.evaluation import nab
from rnnkit.tasks import anomaly

CATEGORIES = ("realKnownCause", "artificialWithAnomaly")


def series_scores(
    path: Path, out: Path, reuse: bool, cfg: anomaly.DetectConfig, seed: int
) -> pd.DataFrame:
    """The per-row z of one series (trained now, or read back from ``out``)."""
    cache = out / f"{path.parent.name}__{path.stem}.csv"
    if reuse and cache.is_file():
        return pd.read_csv(cache)
    series = read_csv(path, "timestamp", ["value"], regular=False)
    start = time.perf_counter()
    detection = anomaly.detect(series, cfg, train={"seed": seed})
    frame = detection.frame(series).reset_index(names="time")
    frame["seconds"] = time.perf_counter() - start
    frame.to_csv(cache, index=False)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/anomaly/nab")
    parser.add_argument("--out", default="runs/nab")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="Training seed of every forecaster.")
    parser.add_argument("--img", help="Folder for the PNGs of every series.")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    if not data.is_dir():
        sys.exit(f"NAB data not found at {data}")
    out.mkdir(parents=True, exist_ok=True)
    cfg = anomaly.DetectConfig()
    windows_file = data / "combined_windows.json"
    rows, weights, scores, randoms, flags = [], [], [], [], []
    rng = np.random.default_rng(0)
    for path in sorted(p for c in CATEGORIES for p in (data / c).glob("*.csv")):
        key = f"{path.parent.name}/{path.name}"
        frame = series_scores(path, out, args.reuse, cfg, args.seed)
        w = nab.row_weights(pd.DatetimeIndex(frame["time"]), nab.read_windows(windows_file, key))
        start = int(cfg.train_fraction * len(frame))
        score, flag, threshold = anomaly.threshold_scores(frame["z"].to_numpy(), start, cfg)
        result = nab.score_flags(w, flag)
        rows.append({"series": key, "rows": len(frame), "score": round(result.normalized, 1),
                     "tp": result.tp, "fn": result.fn, "fp": result.fp,
                     "seconds": round(float(frame["seconds"].iloc[0]), 1)})  # fmt: skip
        weights.append(w)
        scores.append(score)
        flags.append(flag)
        randoms.append(rng.random(len(frame)))
        if args.img:
            plot_one(path, score, flag, threshold, windows_file, key, Path(args.img), cfg)
    print(json.dumps(summary(rows, weights, scores, randoms, flags, cfg), indent=2))


def summary(rows, weights, scores, randoms, flags, cfg) -> dict:
    ours = nab.corpus_score(weights, flags)

    def to_flags(s, th):
        return anomaly.flags_from(s, th, cfg.refractory)

    swept_th, swept = nab.best_threshold(weights, scores, to_flags)
    random_th, random = nab.best_threshold(weights, randoms, to_flags)
    _, random_plain = nab.best_threshold(weights, randoms)
    return {
        "config": asdict(cfg),
        "series": rows,
        "overall": {
            "rnnkit, label-free threshold": round(ours.normalized, 1),
            "rnnkit, best corpus threshold (uses labels, as NAB's scoreboard)": round(
                swept.normalized, 1
            ),
            "random, best corpus threshold": round(random.normalized, 1),
            "random, best corpus threshold, no refractory period": round(
                random_plain.normalized, 1
            ),
            "null detector": 0.0,
        },
        "counts": {"tp": ours.tp, "fn": ours.fn, "fp": ours.fp},
        "thresholds": {"swept": swept_th, "random swept": random_th},
    }


def plot_one(path, score, flag, threshold, windows_file, key, img: Path, cfg) -> None:
    img.mkdir(parents=True, exist_ok=True)
    series = read_csv(path, "timestamp", ["value"], regular=False)
    plot_anomalies(series, score, flag, threshold, img / f"nab-{path.stem}.png",
                   nab.read_windows(windows_file, key), int(cfg.train_fraction * len(series)),
                   key)  # fmt: skip


if __name__ == "__main__":
    main()

"""NAB benchmark of `rnnkit.tasks.anomaly`: the categories of a NAB folder, one strict JSON.

For every series: train the detector's forecaster on its first 15% (NAB's probationary period),
score every row, flag with the label-free threshold, and score the flags with NAB's standard
profile. The rows are read in file order, as they come (``regular=False``): NAB scores its
detectors on the files' own rows. Reported beside it, on the same series: a random detector
(uniform scores) at its best threshold, with and without the detector's refractory period, and,
as NAB's scoreboard does, the detector with the one threshold that maximises its score (both
use the labels). The detector's defaults were chosen on `TUNED`; ``held_out`` is the score on
the other categories given.

    python -m benchmarks.nab --data DIR [--categories A,B] --out runs/nab > nab.json

DIR is a NAB folder: `rnnkit data path nab-full` (or nab; the default), or a copy of NAB's
repository (its ``data/`` and ``labels/``). ``--categories`` defaults to every category folder
with labelled windows. ``--reuse`` re-thresholds the per-series errors of an earlier run in
``--out`` (no training); ``--jobs 2`` trains two series at once. ``--tune A,B`` chooses the
likelihood's p_value and the refractory period on categories A and B (`TUNE_GRID`, their labels)
and reports the others as ``held_out``. ``--published NAB`` adds the scores of the detectors
whose results NAB publishes (``NAB/results/DETECTOR``, at NAB's thresholds for the standard
profile) on the same series, as scored by rnnkit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rnnkit.data import registry
from rnnkit.data.timeseries import read_csv
from rnnkit.errors import RnnkitError
from rnnkit.evaluation import nab
from rnnkit.tasks import anomaly

#: the categories the detector's defaults were chosen on (what CI's copy of NAB holds)
TUNED = ("realKnownCause", "artificialWithAnomaly")
#: seeds of the random detector (its best score is averaged over them)
RANDOM_SEEDS = 5


def locate(data: Path, windows: str | None) -> tuple[Path, Path]:
    """The folder of the category folders and the windows file: a data set's folder (both at
    its top) or NAB's repository (``data/``, ``labels/``)."""
    if not data.is_dir():
        raise RnnkitError(f"NAB folder {data} does not exist; give --data")
    root = data / "data" if (data / "data").is_dir() else data
    found = [Path(windows)] if windows else [data / "combined_windows.json",
                                             data / "labels" / "combined_windows.json"]  # fmt: skip
    for path in found:
        if path.is_file():
            return root, path
    raise RnnkitError(f"no combined_windows.json in {data} (nor in its labels/); give --windows")


def labelled(windows: dict, category: str) -> int:
    """Windows labelled in ``category``."""
    return sum(len(w) for k, w in windows.items() if k.split("/")[0] == category)


def categories_of(root: Path, windows: dict, given: str | None) -> list[str]:
    """The categories to run: ``given`` (comma-separated), else every folder with windows."""
    if given:
        names = [c.strip() for c in given.split(",") if c.strip()]
        missing = [c for c in names if not (root / c).is_dir()]
        if missing:
            raise RnnkitError(f"{root} has no category {missing[0]}; the full NAB is "
                              "`rnnkit data fetch nab-full` (or import a NAB copy)")  # fmt: skip
        return names
    return sorted(p.name for p in root.iterdir() if p.is_dir() and labelled(windows, p.name))


def series_errors(path: Path, out: Path, reuse: bool, cfg: dict, train: dict) -> pd.DataFrame:
    """The per-row z of one series (trained now, or read back from ``out``), with the seconds
    (wall, CPU) its training and scoring took; or one ``error`` (the detector refused it).
    ``train``: the forecaster's training settings beside the detector's defaults."""
    cache = out / f"{path.parent.name}__{path.stem}.csv"
    if reuse and cache.is_file():
        return pd.read_csv(cache)
    series = read_csv(path, "timestamp", ["value"], regular=False)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        detection = anomaly.detect(series, anomaly.DetectConfig(**cfg), train=train)
    except RnnkitError as err:  # e.g. a constant training part: reported, not scored
        return pd.DataFrame({"error": [str(err)]})
    frame = detection.frame(series).reset_index(names="time")[["time", "value", "z"]]
    frame["seconds"] = time.perf_counter() - wall
    frame["cpu_seconds"] = time.process_time() - cpu
    frame.to_csv(cache, index=False)
    return frame


def all_errors(paths: list[Path], args, cfg: anomaly.DetectConfig) -> list[pd.DataFrame]:
    """`series_errors` of every series, in ``args.jobs`` processes."""
    train = {"seed": args.seed}
    if args.max_steps:
        train.update(max_steps=args.max_steps, eval_every=args.max_steps)
    jobs = [(p, Path(args.out), args.reuse, asdict(cfg), train) for p in paths]
    if args.jobs <= 1:
        return [series_errors(*j) for j in jobs]
    with ProcessPoolExecutor(args.jobs) as pool:
        return list(pool.map(series_errors, *zip(*jobs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="NAB folder (default: the data set nab-full, else nab)")
    parser.add_argument("--windows", help="combined_windows.json (default: found in --data)")
    parser.add_argument("--categories", help="Comma-separated (default: every labelled one).")
    parser.add_argument("--out", default="runs/nab")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="Training seed of every forecaster.")
    parser.add_argument("--max-steps", type=int, help="Training steps (default: the detector's).")
    parser.add_argument("--jobs", type=int, default=1, help="Series trained at once.")
    parser.add_argument("--tune", help="Choose p_value and refractory on these categories.")
    parser.add_argument("--published", help="NAB's repository: score its published results.")
    parser.add_argument("--img", help="Folder for the PNGs of every series.")
    args = parser.parse_args()
    try:
        report = run(args)
    except RnnkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, indent=2, allow_nan=False))


def default_data() -> Path:
    """The registry's NAB data set: the whole corpus if it is there."""
    for name in ("nab-full", "nab"):
        if registry.is_present(name):
            return registry.path(name)
    raise RnnkitError("no NAB data: `rnnkit data fetch nab-full` (or give --data)")


def run(args) -> dict:
    """The benchmark's report (see the module docstring)."""
    root, windows_file = locate(Path(args.data) if args.data else default_data(), args.windows)
    windows = json.loads(windows_file.read_text())
    categories = categories_of(root, windows, args.categories)
    tuned = categories_of(root, windows, args.tune) if args.tune else list(TUNED)
    run_on = categories + [c for c in tuned if args.tune and c not in categories]
    paths = sorted(p for c in run_on for p in (root / c).glob("*.csv"))
    if not paths:
        raise RnnkitError(f"no CSV files in {', '.join(categories)} under {root}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cfg = anomaly.DetectConfig()
    wall = time.perf_counter()
    found = all_errors(paths, args, cfg)
    refused = [{"series": f"{p.parent.name}/{p.name}", "score": None, "reason": f["error"][0]}
               for p, f in zip(paths, found) if "error" in f]  # fmt: skip
    paths, frames = zip(*[(p, f) for p, f in zip(paths, found) if "error" not in f])
    keys = [f"{p.parent.name}/{p.name}" for p in paths]
    tuning = {}
    if args.tune:
        cfg, tuning = tune(keys, frames, windows, cfg, tuned)
    report = evaluate(keys, frames, windows, cfg, tuned)
    report["series"] += refused
    report["seconds"] = {
        "wall": round(time.perf_counter() - wall, 1),
        "train_and_score_cpu": round(sum(float(f["cpu_seconds"].iloc[0]) for f in frames), 1),
        "train_and_score_wall": round(sum(float(f["seconds"].iloc[0]) for f in frames), 1),
    }
    if args.published:
        report["published"] = published(Path(args.published), keys, windows, tuned)
    if args.img:
        for path, key, frame in zip(paths, keys, frames):
            plot_one(path, frame, windows.get(key, []), key, Path(args.img), cfg)
    return {"data": str(root), "categories": run_on, "tuned_on": tuned, **tuning, **report}


#: the settings `tune` searches: the likelihood's tail probability and the refractory rows
TUNE_GRID = {"p_value": (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-10),
             "refractory": (50, 100, 150, 200, 300, 600)}  # fmt: skip


def tune(keys, frames, windows, cfg, categories: list[str]):
    """The `TUNE_GRID` settings with the best label-free score on ``categories`` (their labels
    are read, no other's), and the scores of the grid."""
    chosen = [i for i, k in enumerate(keys) if k.split("/")[0] in categories]
    weights = [weights_of(keys[i], frames[i]["time"], windows) for i in chosen]
    grid = []
    for p_value in TUNE_GRID["p_value"]:
        for refractory in TUNE_GRID["refractory"]:
            trial = replace(cfg, p_value=p_value, refractory=refractory)
            found = nab.corpus_score(weights, [threshold(frames[i], trial)[1] for i in chosen])
            grid.append({"p_value": p_value, "refractory": refractory,
                         "score": round(found.normalized, 1)})  # fmt: skip
    best = max(grid, key=lambda g: g["score"])
    cfg = replace(cfg, p_value=best["p_value"], refractory=best["refractory"])
    return cfg, {"tuning": {"categories": categories, "chosen": best, "grid": grid}}


def threshold(frame: pd.DataFrame, cfg: anomaly.DetectConfig):
    """`anomaly.threshold_scores` of a series' errors (``frame``: value, z)."""
    start = int(cfg.train_fraction * len(frame))
    return anomaly.threshold_scores(frame["z"].to_numpy(), start, cfg, frame[["value"]].to_numpy(),
                                    cfg.input_chunk_length)  # fmt: skip


def weights_of(key: str, times: pd.Series, windows: dict) -> nab.RowWeights:
    stamps = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in windows.get(key, [])]
    return nab.row_weights(pd.DatetimeIndex(pd.to_datetime(times)), stamps)


def score_of(result: nab.NabScore) -> dict:
    """A score as JSON: null (and why) without a counted window."""
    if result.perfect - result.null <= 0:
        return {"score": None, "reason": "no labelled window outside the probationary period",
                "fp": result.fp}  # fmt: skip
    return {"score": round(result.normalized, 1), "tp": result.tp, "fn": result.fn,
            "fp": result.fp}  # fmt: skip


def evaluate(keys: list[str], frames: list[pd.DataFrame], windows: dict, cfg, tuned=TUNED) -> dict:
    """Threshold every series' z with ``cfg``, score per series, per category, overall and on
    the categories not in ``tuned``."""
    rows, weights, scores, flags = [], [], [], []
    for key, frame in zip(keys, frames):
        w = weights_of(key, frame["time"], windows)
        score, flag, _ = threshold(frame, cfg)
        weights.append(w)
        scores.append(score)
        flags.append(flag)
        rows.append({"series": key, "rows": len(frame), "windows": len(w.windows),
                     **score_of(nab.score_flags(w, flag)),
                     "cpu_seconds": round(float(frame["cpu_seconds"].iloc[0]), 1)})  # fmt: skip
    groups = {"overall": list(range(len(keys)))}
    held = [i for i, k in enumerate(keys) if k.split("/")[0] not in tuned]
    if held and len(held) < len(keys):
        groups["held_out"] = held
    for i, key in enumerate(keys):
        groups.setdefault(key.split("/")[0], []).append(i)
    found = {name: group_scores([weights[i] for i in idx], [scores[i] for i in idx],
                                [flags[i] for i in idx], cfg)
             for name, idx in groups.items()}  # fmt: skip
    overall = {"overall": found.pop("overall")}
    if "held_out" in found:
        overall["held_out"] = found.pop("held_out")
    return {"config": asdict(cfg), **overall, "per_category": found, "series": rows}


def group_scores(weights, scores, flags, cfg) -> dict:
    """Label-free, best-threshold and random scores of a group of series."""
    ours = nab.corpus_score(weights, flags)
    starts = [int(cfg.train_fraction * len(s)) for s in scores]
    if sum(len(w.windows) for w in weights) == 0:
        return {"windows": 0, **score_of(ours)}

    def to_flags(start):
        return lambda s, th: anomaly.flags_from(s, th, cfg.refractory, start)

    _, swept = best_threshold(weights, scores, [to_flags(s) for s in starts])
    refractory, plain = [], []
    for seed in range(RANDOM_SEEDS):
        rng = np.random.default_rng(seed)
        randoms = [rng.random(len(s)) for s in scores]
        refractory.append(best_threshold(weights, randoms, [to_flags(0)] * len(scores))[1])
        plain.append(best_threshold(weights, randoms, [np.greater_equal] * len(scores))[1])
    random_refractory = float(np.mean([r.normalized for r in refractory]))
    random_plain = float(np.mean([r.normalized for r in plain]))
    return {
        "windows": sum(len(w.windows) for w in weights),
        "label_free": round(ours.normalized, 1),
        "random_best": round(max(random_refractory, random_plain), 1),
        "random_best_refractory": round(random_refractory, 1),
        "random_best_plain": round(random_plain, 1),
        "best_threshold": round(swept.normalized, 1),
        "tp": ours.tp, "fn": ours.fn, "fp": ours.fp,
    }  # fmt: skip


def best_threshold(weights, scores, to_flags, candidates: int = 200):
    """`nab.best_threshold` with a flagging rule per series."""
    grid = nab.threshold_grid(scores, candidates)
    best = (np.inf, nab.corpus_score(weights, [np.zeros(len(s), bool) for s in scores]))
    for threshold in grid:
        found = nab.corpus_score(weights, [f(s, threshold) for f, s in zip(to_flags, scores)])
        if found.raw > best[1].raw:
            best = (float(threshold), found)
    return best


def published(nab_root: Path, keys: list[str], windows: dict, tuned=TUNED) -> dict:
    """Scores of NAB's published detector results on the series ``keys``, each detector at
    its threshold for the standard profile (config/thresholds.json), scored by rnnkit; and
    the detector's published final score over NAB's whole corpus."""
    thresholds = json.loads((nab_root / "config" / "thresholds.json").read_text())
    finals = json.loads((nab_root / "results" / "final_results.json").read_text())
    found = {}
    for detector in sorted(finals):
        folder = nab_root / "results" / detector
        if not folder.is_dir() or detector not in thresholds:
            continue
        th = thresholds[detector]["standard"]["threshold"]
        groups: dict[str, list[nab.NabScore]] = {}
        for key in keys:
            category, name = key.split("/")
            frame = pd.read_csv(folder / category / f"{detector}_{name}")
            result = nab.score_flags(weights_of(key, frame["timestamp"], windows),
                                     frame["anomaly_score"].to_numpy() >= th)  # fmt: skip
            groups.setdefault(category, []).append(result)
            groups.setdefault("overall", []).append(result)
            if category not in tuned:
                groups.setdefault("held_out", []).append(result)
        found[detector] = {g: score_of(sum(r, nab.NabScore(0, 0, 0, 0, 0, 0)))["score"]
                           for g, r in groups.items()}  # fmt: skip
        found[detector]["published_final_all_58"] = round(finals[detector]["standard"], 2)
    return found


def plot_one(path: Path, frame, windows: list, key: str, img: Path, cfg) -> None:
    from rnnkit.diagnostics.timeseries_plots import plot_anomalies

    img.mkdir(parents=True, exist_ok=True)
    series = read_csv(path, "timestamp", ["value"], regular=False)
    start = int(cfg.train_fraction * len(series))
    score, flag, found = threshold(frame, cfg)
    stamps = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in windows]
    plot_anomalies(series, score, flag, found, img / f"nab-{path.stem}.png", stamps, start,
                   key)  # fmt: skip


if __name__ == "__main__":
    main()

"""The registry's NAB data sets: the whole corpus (nab-full) and the part CI has (nab)."""

from __future__ import annotations

from collections import Counter

from rnnkit.data import registry


def test_nab_full_lists_the_58_series_of_the_7_categories_with_their_labels():
    full = registry.get("nab-full")
    assert full.manifest_sha256 == registry.NAB_FULL_MANIFEST_SHA256
    series = [f.path.split("/") for f in full.files if f.path.startswith("data/")]
    assert len(series) == 58 and all(len(p) == 3 and p[2].endswith(".csv") for p in series)
    assert Counter(p[1] for p in series) == {
        "realAWSCloudwatch": 17, "realAdExchange": 6, "realKnownCause": 7, "realTraffic": 7,
        "realTweets": 10, "artificialNoAnomaly": 5, "artificialWithAnomaly": 6,
    }  # fmt: skip
    paths = {f.path for f in full.files}
    assert {"labels/combined_windows.json", "LICENSE.txt"} <= paths
    assert all(f.url == f"https://raw.githubusercontent.com/numenta/NAB/master/{f.path}"
               for f in full.files)  # fmt: skip


def test_nab_files_are_the_same_bytes_in_both_data_sets():
    full = {f.path: f.sha256 for f in registry.get("nab-full").files}
    for f in registry.get("nab").files:
        inside = f.path if f.path == "LICENSE.txt" else (
            f"labels/{f.path}" if f.path.endswith(".json") else f"data/{f.path}")  # fmt: skip
        assert full[inside] == f.sha256, f.path

"""Suite-wide fixtures.

Every test session gets an empty data folder of its own (``$RNNKIT_DATA``), so tests never read
or write the user's. Tests that need a full data set ask the `dataset` fixture, which imports it
through the registry (sha256 checked) from the data folder the session started with (the
user's ``$RNNKIT_DATA``) or from the offline copy beside the repository (``../shared/data``,
which CI has), and skips the test, saying why, when neither has it. Everything else uses tiny
fixtures made in the test or kept under ``tests/fixtures/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

#: the offline copy of the data sets beside the repository (CI has it; a lone clone does not)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: where each data set lives in that copy (its README's table)
SHARED_LAYOUT = {
    "tiny-shakespeare": "text/tinyshakespeare.txt",
    "mr": "sentiment",
    "multi30k": "translation/multi30k",
    "jsb-chorales": "music/jsb-chorales-quarter.json",
    "fsdd": "speech/fsdd",
    "nab": "anomaly/nab",
    "airline-passengers": "timeseries/airline-passengers.csv",
    "sunspots": "timeseries/monthly-sunspots.csv",
    "sp500": "timeseries/sp500-monthly.csv",
}
#: the data folder the session started with (None: unset), before `data_folder` replaces it
USER_DATA = os.environ.get("RNNKIT_DATA") or None


@pytest.fixture(autouse=True)
def fixed_threads(monkeypatch) -> None:
    """Trainers keep torch's thread count in tests (the CLI would let them adapt it to the
    machine's load, which makes results depend on the neighbours); tests/training/test_threads
    tests the adapting itself."""
    monkeypatch.setenv("RNNKIT_THREADS", "fixed")


@pytest.fixture(scope="session", autouse=True)
def data_folder(tmp_path_factory) -> Iterator[Path]:
    """An empty data folder for the session, as ``$RNNKIT_DATA``."""
    folder = tmp_path_factory.mktemp("rnnkit-data")
    before = os.environ.get("RNNKIT_DATA")
    os.environ["RNNKIT_DATA"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("RNNKIT_DATA", None)
    else:
        os.environ["RNNKIT_DATA"] = before


@pytest.fixture(scope="session")
def dataset(data_folder) -> Callable[[str], Path]:
    """``dataset(NAME)``: the folder of data set NAME in the session's data folder, imported
    through the registry the first time; skips the calling test when no copy is at hand."""
    from rnnkit.data import registry

    def get(name: str) -> Path:
        before = os.environ.get("RNNKIT_DATA")
        os.environ["RNNKIT_DATA"] = str(data_folder)  # a test may point it elsewhere
        try:
            if registry.is_present(name):
                return registry.path(name)
            sources = [Path(USER_DATA) / name] if USER_DATA else []
            if name in SHARED_LAYOUT:
                sources.append(SHARED / SHARED_LAYOUT[name])
            for source in sources:
                if source.exists():
                    return registry.import_data(name, source)
        finally:
            os.environ["RNNKIT_DATA"] = before or str(data_folder)
        pytest.skip(
            f"data set {name!r} is absent: neither $RNNKIT_DATA ({USER_DATA or 'unset'}) nor "
            f"{SHARED} has it (run `rnnkit data fetch {name}` and set RNNKIT_DATA to run this)"
        )

    return get

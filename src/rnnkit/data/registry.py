"""The data-set registry: the data sets the docs use, by name, each with its canonical source
URLs, the sha256 and size of every file, its licence and citation; and the user's data folder
that holds them.

The data folder is ``$RNNKIT_DATA``, else ``$XDG_CACHE_HOME/rnnkit/data``, else
``~/.cache/rnnkit/data``; data set NAME lives in ``DATA/NAME/`` with its files at their relative
paths. `fetch` downloads a data set (from its canonical URLs, or ``MIRROR/NAME/PATH``) and
`import_data` copies a local copy; both verify every file's sha256 in a staging folder
(``DATA/.rnnkit-partial/NAME/``) and rename the whole data set into place at the end, so the data
folder holds a data set entirely or not at all. A corrupt file discards the staging folder; an
interrupted download keeps its ``.part`` file there, and the same command resumes it (an HTTP
``Range`` request). A data set in place carries a stamp (`STAMP`) with the size and modification
time of each file when it was verified, so `path` knows it is intact without hashing it again.

Tasks name data sets where they take a file or folder (`resolve`): ``--data jsb-chorales`` is
that data set's main file, ``--csv nab/realKnownCause/nyc_taxi.csv`` a file inside one.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import shutil
import stat
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rnnkit import io
from rnnkit.errors import RnnkitError, shorten

#: the environment variable naming the data folder
ENV = "RNNKIT_DATA"
#: the file in a data set's folder recording what was verified (sizes and modification times)
STAMP = ".rnnkit-verified"
#: the folder (inside the data folder) of unfinished fetches and imports
PARTIAL = ".rnnkit-partial"
#: the largest archive downloaded to extract files from (MR's tar.gz is 0.5 MB)
MAX_ARCHIVE_BYTES = 256 << 20
#: seconds without an answer before a download is given up (it can be resumed)
TIMEOUT = 60.0

_GITHUB = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class DataFile:
    """One file of a data set.

    Attributes:
        path: where it lives in the data set's folder ("/"-separated, relative).
        sha256: hex digest of its bytes (of its decompressed content if ``gunzipped``).
        size: its size in bytes (of its decompressed content if ``gunzipped``).
        url: where it was published (the canonical source).
        member: the file's path inside the ``.tar.gz`` archive at ``url``, if it is in one.
        gunzipped: a ``.gz`` file whose publishers recompressed it (the same content in
            different gzip bytes): ``sha256`` and ``size`` are of what it decompresses to.
    """

    path: str
    sha256: str
    size: int
    url: str
    member: str | None = None
    gunzipped: bool = False

    def download_limit(self) -> int:
        """The most bytes a download of this file may have (more is a corrupt source)."""
        if self.member is not None:
            return MAX_ARCHIVE_BYTES
        return self.size + self.size // 10 + (1 << 20) if self.gunzipped else self.size


@dataclass(frozen=True)
class DataSet:
    """A named data set: what it is, where it comes from, what it may be used for.

    Attributes:
        main: what a task reads when given the data set's name: the relative path of a file
            or folder in it ("": the data set's folder).
    """

    name: str
    description: str
    files: tuple[DataFile, ...]
    licence: str
    citation: str
    source: str
    main: str = ""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @functools.cached_property
    def manifest_sha256(self) -> str:
        """sha256 of the sorted ``sha256  path`` listing of the files (as ``sha256sum`` prints)."""
        listing = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(self.files, key=_path_key))
        return hashlib.sha256(listing.encode()).hexdigest()


def _path_key(f: DataFile) -> str:
    return f.path


# --- the table ----------------------------------------------------------------------------------

_NAB = f"{_GITHUB}/numenta/NAB/master"
_NAB_FILES = (
    ("LICENSE.txt", 1056, "0a0b4d0b10cb1f7ed9ab2993ef93defc03447e6eba9daca1315dd32dae4877e3"),
    ("artificialNoAnomaly/art_daily_no_noise.csv", 116776,
     "ccb7743ac2de8ca110db4af796d11ba31a23ad448a28e353a935c15f637756bc"),
    ("artificialNoAnomaly/art_daily_perfect_square_wave.csv", 100816,
     "662ff0a295b81eb0ff8e81116a54a497cd6f6b07c19c7a5ea72cce494913ce62"),
    ("artificialNoAnomaly/art_daily_small_noise.csv", 140187,
     "c4b304229f69f108eaa024fb2406fcd4510c5c5d95cd0053e2da6989682e4e6d"),
    ("artificialNoAnomaly/art_flatline.csv", 100816,
     "1cc10761ddd6d55fb5f0d9cfc73610416abbb120ee14bb65eff288509a463397"),
    ("artificialNoAnomaly/art_noisy.csv", 140916,
     "ad455adeaf06852222500955f2aefe6bd389cc762ef68e7102ee543209c8607f"),
    ("artificialWithAnomaly/art_daily_flatmiddle.csv", 140292,
     "ea5df125947e9ee2b977ac3d341f3c2a029588862af97cae4a654fc56e838702"),
    ("artificialWithAnomaly/art_daily_jumpsdown.csv", 140814,
     "4af31802e87dff4b4ba3ceb21714ba9d905f7888e1f53d47cc6dd4f856f9debc"),
    ("artificialWithAnomaly/art_daily_jumpsup.csv", 140548,
     "f79f92b93ee4f9c10e2dc552505e8880b0c618639ed5e0f9816e044b75c26456"),
    ("artificialWithAnomaly/art_daily_nojump.csv", 140478,
     "65c85d1834376ed5e622f01721d478609577ea0df0a067c5a5ebe5edea03b077"),
    ("artificialWithAnomaly/art_increase_spike_density.csv", 96869,
     "0959d8871d5c1a3fc3120fb7421e4ef113fffb434af2889085b52aebdb69360c"),
    ("artificialWithAnomaly/art_load_balancer_spikes.csv", 101603,
     "99f7130e54c7c3e818df8e3bdc0974cd241914bb14a10a9c3fa7c1374125d224"),
    ("combined_labels.json", 7015,
     "98724014c162fcfd4be605683517f194051a54e98756c53667bd33ddbc644d9b"),
    ("combined_windows.json", 15359,
     "1e1fbc4601321aad8d0f8b3784c8134299379f68f6c1f7777565f8ffd57ab6b1"),
    ("realKnownCause/ambient_temperature_system_failure.csv", 233321,
     "230b68ccca20f59d562afd5d24ad52939c9b784386bed0054018358bf9120581"),
    ("realKnownCause/cpu_utilization_asg_misconfiguration.csv", 539274,
     "58ba65dc0737cfbac11b51514476d50c438d44011232144bb8d93f392df58f9f"),
    ("realKnownCause/ec2_request_latency_system_failure.csv", 123428,
     "98378580aa80157e057c61d59d81daddccc6c65a2c0c800e3f01f603b8215c3f"),
    ("realKnownCause/machine_temperature_system_failure.csv", 732223,
     "92bf5b87fc7f9bba8ca0b7ec63ccaac8cb4a1371a258e8c29a10ae9c018d82a4"),
    ("realKnownCause/nyc_taxi.csv", 265771,
     "d8fa6f7f0734bf5c8be12c52a94e20a82664c397d9dec4449156bd453d32856d"),
    ("realKnownCause/rogue_agent_key_hold.csv", 55527,
     "47b110baa8e3636574c1033dda1cce780873647fab58223d159d4fee6f180e86"),
    ("realKnownCause/rogue_agent_key_updown.csv", 138333,
     "9797cfef477c13306f7a33874ab4d6cf700f8f2c7e5825a2a5bc02004370909a"),
)  # fmt: skip


def _nab_url(path: str) -> str:
    """NAB keeps its series under data/ and its labels under labels/."""
    if path == "LICENSE.txt":
        return f"{_NAB}/{path}"
    return f"{_NAB}/{'labels' if path.endswith('.json') else 'data'}/{path}"


#: `DataSet.manifest_sha256` of NAB's whole corpus (58 series, labels, licence), guarding the
#: manifest shipped beside this module; its files keep the paths of NAB's repository
NAB_FULL_MANIFEST_SHA256 = "04737ed53d31e078c776e02f499243d6145b9470122c327586a0f5a6b247f571"


def _nab_full_files() -> tuple[DataFile, ...]:
    """NAB's 58 series (data/CATEGORY/NAME.csv), labels (labels/) and licence, from the
    package's manifest (path, size, sha256 per file), checked against the registry's digest."""
    text = (Path(__file__).with_name("manifests") / "nab-full.json").read_bytes()
    files = tuple(DataFile(p, digest, size, f"{_NAB}/{p}")
                  for p, size, digest in json.loads(text)["files"])  # fmt: skip
    listing = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=_path_key))
    if hashlib.sha256(listing.encode()).hexdigest() != NAB_FULL_MANIFEST_SHA256:
        raise RnnkitError("rnnkit's NAB manifest (rnnkit/data/manifests/nab-full.json) does not "
                          "match the registry's digest; reinstall rnnkit")  # fmt: skip
    return files


_MULTI30K = f"{_GITHUB}/multi30k/dataset/master/data/task1/raw"
_MULTI30K_FILES = (
    ("test_2016_flickr.de.gz", 22890,
     "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"),
    ("test_2016_flickr.en.gz", 21077,
     "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9"),
    ("train.de.gz", 637044, "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
    ("train.en.gz", 568929, "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f"),
    ("val.de.gz", 24681, "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
    ("val.en.gz", 21650, "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28"),
)  # fmt: skip

_MR = "https://www.cs.cornell.edu/people/pabo/movie-review-data/rt-polaritydata.tar.gz"
_FASHION = f"{_GITHUB}/zalandoresearch/fashion-mnist/master/data/fashion"
_FASHION_FILES = (
    ("t10k-images-idx3-ubyte.gz", 7840016,
     "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    ("t10k-labels-idx1-ubyte.gz", 10008,
     "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    ("train-images-idx3-ubyte.gz", 47040016,
     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    ("train-labels-idx1-ubyte.gz", 60008,
     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
)  # fmt: skip

_FSDD = f"{_GITHUB}/Jakobovski/free-spoken-digit-dataset/master"
#: `DataSet.manifest_sha256` of FSDD's 2,500 recordings, guarding the manifest shipped beside
#: this module (``find * -type f | LC_ALL=C sort | xargs sha256sum | sha256sum`` in its folder)
FSDD_MANIFEST_SHA256 = "7ba4deefab61dff3c84d150938fd6fbfdde820d54cf5f15cc96bbc3018c4f679"
_JBROWNLEE = f"{_GITHUB}/jbrownlee/Datasets/master"


def _fsdd_files() -> tuple[DataFile, ...]:
    """FSDD's 2,500 recordings from the package's manifest (path, size, sha256 per file),
    checked against the digest the registry holds."""
    text = (Path(__file__).with_name("manifests") / "fsdd.json").read_bytes()
    rows = json.loads(text)["files"]
    files = tuple(DataFile(p, digest, size, f"{_FSDD}/{p}") for p, size, digest in rows)
    listing = "".join(f"{f.sha256}  {f.path}\n" for f in sorted(files, key=_path_key))
    if hashlib.sha256(listing.encode()).hexdigest() != FSDD_MANIFEST_SHA256:
        raise RnnkitError(
            "rnnkit's FSDD manifest (rnnkit/data/manifests/fsdd.json) does not match the "
            "registry's digest; reinstall rnnkit"
        )
    return files


@functools.cache
def datasets() -> dict[str, DataSet]:
    """Every data set the registry knows, by name (in the order `rnnkit data list` shows)."""
    table = [
        DataSet(
            "tiny-shakespeare",
            "1,115,394 characters of Shakespeare's plays, plain UTF-8 (char-rnn's corpus)",
            (DataFile("tinyshakespeare.txt", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0"
                      "ca57e2dc565ed", 1115394,
                      f"{_GITHUB}/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"),),
            "public domain (the plays); compiled by A. Karpathy for char-rnn (MIT)",
            "Karpathy, A. (2015). char-rnn: multi-layer recurrent neural networks for "
            "character-level language models. https://github.com/karpathy/char-rnn",
            "https://github.com/karpathy/char-rnn",
            main="tinyshakespeare.txt",
        ),
        DataSet(
            "mr",
            "MR sentence polarity v1.0: 5,331 positive and 5,331 negative movie-review "
            "sentences, lower-cased and tokenised, latin-1",
            tuple(DataFile(f"rt-polarity.{k}", h, n, _MR, member=f"rt-polaritydata/rt-polarity.{k}")
                  for k, n, h in (
                      ("neg", 612506,
                       "2d11cfbc790f1cd96d78339f41ce53ced1efa83cd22d37d6788fa3fe3d17e2fd"),
                      ("pos", 626395,
                       "4134882974a28d0c7b5151256f0e33a6169984ee7372c279e673f1114f475d58"))),
            "no licence stated; published by the authors for research, cite the paper",
            "Pang, B. and Lee, L. (2005). Seeing stars: exploiting class relationships for "
            "sentiment categorization with respect to rating scales. ACL 2005.",
            "https://www.cs.cornell.edu/people/pabo/movie-review-data/",
        ),
        DataSet(
            "multi30k",
            "Multi30k task 1: English image descriptions and their German translations, "
            "aligned by line (train 29,000, val 1,014, test_2016_flickr 1,000 pairs), gzip'd",
            tuple(DataFile(p, h, n, f"{_MULTI30K}/{p}") for p, n, h in _MULTI30K_FILES),
            "no licence stated by the source repository; research use (the English side comes "
            "from Flickr30K, whose terms apply)",
            "Elliott, D., Frank, S., Sima'an, K. and Specia, L. (2016). Multi30K: multilingual "
            "English-German image descriptions. Workshop on Vision and Language.",
            "https://github.com/multi30k/dataset",
        ),
        DataSet(
            "jsb-chorales",
            "382 Bach chorales as piano rolls at quarter-note resolution, JSON "
            "{train: 229, valid: 76, test: 77}",
            (DataFile("jsb-chorales-quarter.json", "2db9329f1881a1d3f49703ec556bf1d6f84b4f6c1d702"
                      "c156536e93cf31e1c91", 407200,
                      f"{_GITHUB}/czhuang/JSB-Chorales-dataset/master/jsb-chorales-quarter.json"),),
            "public domain (the chorales); no licence stated by the source repository",
            "Boulanger-Lewandowski, N., Bengio, Y. and Vincent, P. (2012). Modeling temporal "
            "dependencies in high-dimensional sequences: application to polyphonic music "
            "generation and transcription. ICML 2012.",
            "https://github.com/czhuang/JSB-Chorales-dataset",
            main="jsb-chorales-quarter.json",
        ),
        DataSet(
            "fsdd",
            "Free Spoken Digit Dataset: 2,500 recordings of the digits 0-9 by 5 speakers, "
            "mono 8 kHz WAV named {digit}_{speaker}_{index}.wav",
            _fsdd_files(),
            "CC BY-SA 4.0",
            "Jackson, Z. et al. (2018). Free Spoken Digit Dataset (FSDD). "
            "https://github.com/Jakobovski/free-spoken-digit-dataset",
            "https://github.com/Jakobovski/free-spoken-digit-dataset",
            main="recordings",
        ),
        DataSet(
            "nab",
            "Numenta Anomaly Benchmark: the realKnownCause, artificialWithAnomaly and "
            "artificialNoAnomaly series (timestamp,value) with the official labels and windows",
            tuple(DataFile(p, h, n, _nab_url(p)) for p, n, h in _NAB_FILES),
            "MIT (NAB, LICENSE.txt)",
            "Lavin, A. and Ahmad, S. (2015). Evaluating real-time anomaly detection "
            "algorithms: the Numenta Anomaly Benchmark. IEEE ICMLA 2015.",
            "https://github.com/numenta/NAB",
        ),
        DataSet(
            "nab-full",
            "Numenta Anomaly Benchmark, all 58 series in its 7 categories (realAWSCloudwatch, "
            "realAdExchange, realKnownCause, realTraffic, realTweets, artificialNoAnomaly, "
            "artificialWithAnomaly) under data/, the official labels and windows under labels/ "
            "(the layout of NAB's repository: `rnnkit data import nab-full NAB_CLONE`)",
            _nab_full_files(),
            "MIT (NAB, LICENSE.txt)",
            "Lavin, A. and Ahmad, S. (2015). Evaluating real-time anomaly detection "
            "algorithms: the Numenta Anomaly Benchmark. IEEE ICMLA 2015.",
            "https://github.com/numenta/NAB",
        ),
        DataSet(
            "airline-passengers",
            "monthly international airline passengers, 1949-01..1960-12 (Month,Passengers)",
            (DataFile("airline-passengers.csv", "8cb51be753a718d9be5d76d7e238cc224792754676adc21"
                      "faa59e954b0201621", 2180, f"{_JBROWNLEE}/airline-passengers.csv"),),
            "public data (a textbook series); no licence stated by the source repository",
            "Box, G. E. P. and Jenkins, G. M. (1976). Time Series Analysis: Forecasting and "
            "Control, series G.",
            "https://github.com/jbrownlee/Datasets",
            main="airline-passengers.csv",
        ),
        DataSet(
            "sunspots",
            "monthly mean sunspot numbers, 1749-01..1983-12 (Month,Sunspots)",
            (DataFile("monthly-sunspots.csv", "c4ec8cc57d9f6fb6ecdb3e1f37f25b6f4badd5124c55931"
                      "052b0cd2fc3bc71f3", 45039, f"{_JBROWNLEE}/monthly-sunspots.csv"),),
            "SILSO data, CC BY-NC 4.0 (Royal Observatory of Belgium)",
            "SILSO, World Data Center - Sunspot Number and Long-term Solar Observations, "
            "Royal Observatory of Belgium.",
            "https://github.com/jbrownlee/Datasets",
            main="monthly-sunspots.csv",
        ),
        DataSet(
            "sp500",
            "S&P 500 composite monthly, 1871-01..2026-06 (Date,SP500,Dividend,Earnings,...); "
            "the source is updated monthly, so its newest file differs from this one",
            (DataFile("sp500-monthly.csv", "28d16941c581bda9bdcae4e0f9e3cc4b61204f8484e8c2249"
                      "abdde2efe2cc3c4", 123698,
                      f"{_GITHUB}/datasets/s-and-p-500/main/data/data.csv"),),
            "PDDL 1.0 (the package); the data are Robert Shiller's",
            "Shiller, R. J. Irrational Exuberance, online data; packaged by datasets/s-and-p-500.",
            "https://github.com/datasets/s-and-p-500",
            main="sp500-monthly.csv",
        ),
        DataSet(
            "fashion-mnist",
            "Fashion-MNIST: 70,000 labelled 28x28 grey images of 10 kinds of clothing (IDX, "
            "gzip'd; sha256 of the decompressed files)",
            tuple(DataFile(p, h, n, f"{_FASHION}/{p}", gunzipped=True)
                  for p, n, h in _FASHION_FILES),
            "MIT",
            "Xiao, H., Rasul, K. and Vollgraf, R. (2017). Fashion-MNIST: a novel image dataset "
            "for benchmarking machine learning algorithms. arXiv:1708.07747.",
            "https://github.com/zalandoresearch/fashion-mnist",
        ),
    ]  # fmt: skip
    return {ds.name: ds for ds in table}


def get(name: str) -> DataSet:
    """The data set ``name``.

    Raises:
        RnnkitError: no such data set (the message lists the names).
    """
    table = datasets()
    if name not in table:
        raise RnnkitError(f"no data set named {shorten(name)}; the registry has "
                          f"{', '.join(table)} (`rnnkit data list`)")  # fmt: skip
    return table[name]


def describe(ds: DataSet) -> dict[str, Any]:
    """What `rnnkit data list --json` shows of ``ds``: its facts, every file, and whether it is
    in the data folder."""
    folder = data_dir() / ds.name
    files = []
    for f in ds.files:
        entry: dict[str, Any] = {"path": f.path, "size": f.size, "sha256": f.sha256, "url": f.url}
        if f.member is not None:
            entry["archive_member"] = f.member
        if f.gunzipped:
            entry["sha256_of"] = "decompressed content"
        files.append(entry)
    return {"name": ds.name, "description": ds.description, "licence": ds.licence,
            "citation": ds.citation, "source": ds.source, "size": ds.size,
            "file_count": len(ds.files), "manifest_sha256": ds.manifest_sha256,
            "present": _verified(ds, folder), "path": str(folder), "main": ds.main,
            "files": files}  # fmt: skip


# --- the data folder ----------------------------------------------------------------------------


def data_dir() -> Path:
    """The data folder: ``$RNNKIT_DATA``, else ``$XDG_CACHE_HOME/rnnkit/data``, else
    ``~/.cache/rnnkit/data`` (it need not exist yet)."""
    chosen = os.environ.get(ENV)
    if chosen:
        return Path(chosen).expanduser().absolute()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    if not cache.is_absolute():  # the XDG specification: ignore a relative path
        cache = Path.home() / ".cache"
    return cache / "rnnkit" / "data"


def _hint(name: str) -> str:
    return (f"fetch it with `rnnkit data fetch {name}` (or `rnnkit data import {name} PATH` for "
            "a local copy)")  # fmt: skip


def is_present(name: str) -> bool:
    """Whether data set ``name`` is in the data folder, intact as verified."""
    return _verified(get(name), data_dir() / name)


def path(name: str) -> Path:
    """The folder of data set ``name`` in the data folder.

    Raises:
        RnnkitError: unknown name, or the data set is not there (or changed since it was
            verified); the message gives the command that fetches it.
    """
    ds = get(name)
    folder = data_dir() / name
    if not _verified(ds, folder):
        if os.path.lexists(folder):
            raise RnnkitError(f"data set {name!r} in {folder} is incomplete or changed since it "
                              f"was verified; {_hint(name)}")  # fmt: skip
        raise RnnkitError(f"data set {name!r} is not here; {_hint(name)}; the data folder is "
                          f"{folder.parent} (${ENV} chooses another)")  # fmt: skip
    return folder


def resolve(value: str) -> str:
    """A task's file or folder setting: an existing path stays as given; a data set's name is
    its main file or folder (``jsb-chorales``: its JSON file), and ``NAME/PATH`` a file or folder
    in it (``nab/realKnownCause/nyc_taxi.csv``); anything else stays as given, for the task to
    report.

    Raises:
        RnnkitError: ``value`` names a data set that is not in the data folder.
    """
    if not value or os.path.lexists(os.path.expanduser(value)):
        return value
    name, _, inner = value.partition("/")
    if name not in datasets():
        return value
    return str(path(name) / (inner or get(name).main))


def _verified(ds: DataSet, folder: Path) -> bool:
    """Whether ``folder`` holds ``ds`` as its stamp recorded it (each file regular, of the size
    and modification time it had when its sha256 was checked)."""
    try:
        stamp = io.read_json(folder / STAMP)
    except RnnkitError:
        return False
    files = stamp.get("files") if isinstance(stamp, dict) else None
    if (not isinstance(files, dict) or stamp.get("name") != ds.name
            or stamp.get("manifest_sha256") != ds.manifest_sha256
            or len(files) != len(ds.files)):  # fmt: skip
        return False
    for f in ds.files:
        try:
            info = os.lstat(folder / f.path)
        except OSError:
            return False
        if not stat.S_ISREG(info.st_mode) or files.get(f.path) != [info.st_size, info.st_mtime_ns]:
            return False
    return True


def _problem(file: Path, f: DataFile) -> str | None:
    """None if ``file`` is ``f`` (its sha256 and size); else what is wrong, in a few words."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(file, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if f.gunzipped else raw
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > f.size:
                    return f"more than the registry's {f.size} bytes"
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        if not f.gunzipped:
            raise
        return f"not a complete gzip file ({err})"
    if size != f.size:
        return f"{size} bytes, not the registry's {f.size}"
    if digest.hexdigest() != f.sha256:
        return f"sha256 {digest.hexdigest()[:16]}..., not the registry's {f.sha256[:16]}..."
    return None


# --- fetch and import ---------------------------------------------------------------------------


class _Corrupt(RnnkitError):
    """A source gave a file that is not the registry's: the staging folder is discarded."""


def fetch(name: str, mirror: str | None = None, progress: bool | None = None) -> Path:
    """Download data set ``name`` into the data folder (nothing if it is there already) and
    return its folder: from its canonical URLs, or ``MIRROR/NAME/PATH`` for each file ``PATH``.

    Every file is checked against its sha256 in the staging folder, and the data set is renamed
    into place when all are; ``progress`` (default: when stderr is a terminal) shows a bar.

    Raises:
        RnnkitError: a URL answers an error (404...) or cannot be reached; a download is cut
            off (its part is kept: the same call resumes it); a file is corrupt (nothing of the
            data set is kept).
    """
    ds = get(name)
    root = data_dir()
    target = root / name
    if _verified(ds, target):
        return target
    if mirror is not None and not mirror.startswith(("http://", "https://", "file:")):
        raise RnnkitError(f"--mirror must be an http://, https:// or file: URL, got "
                          f"{shorten(mirror)}")  # fmt: skip
    staging, lock = _begin(root, name)
    try:
        bar = _bar(ds, mirror, progress)
        try:
            for f in ds.files:
                _fetch_file(ds, f, mirror, staging, bar)
        except _Corrupt:
            _remove(staging)
            raise
        finally:
            bar.close()
        _place(ds, staging, target, origin=mirror or "canonical sources")
    finally:
        os.close(lock)
    return target


def import_data(name: str, source: str | os.PathLike) -> Path:
    """Copy a local copy of data set ``name`` into the data folder, checking every file's
    sha256, and return its folder. ``source`` is the folder holding the data set's files at
    their relative paths (or the folder of the first path component's parent, e.g. FSDD's
    ``recordings/``), or the file itself for a data set of one file.

    Raises:
        RnnkitError: a file is missing or is not the registry's (nothing is imported).
    """
    ds = get(name)
    sources = _sources(ds, Path(source).expanduser())
    root = data_dir()
    staging, lock = _begin(root, name)
    try:
        _remove(staging)
        try:
            for f in ds.files:
                dest = staging / f.path
                dest.parent.mkdir(parents=True, exist_ok=True)
                _copy(sources[f.path], dest, f.download_limit())
                problem = _problem(dest, f)
                if problem is not None:
                    raise _Corrupt(f"{sources[f.path]} is not {name}'s {f.path} ({problem}); "
                                   "nothing was imported")  # fmt: skip
        except _Corrupt:
            _remove(staging)
            raise
        except OSError as err:
            _remove(staging)
            raise RnnkitError(f"cannot import {name} from {source} ({err.strerror or err}); "
                              "nothing was imported") from None  # fmt: skip
        _place(ds, staging, root / name, origin=str(Path(source).expanduser().absolute()))
    finally:
        os.close(lock)
    return root / name


def _sources(ds: DataSet, source: Path) -> dict[str, Path]:
    """The local file of each of ``ds``'s files under ``source`` (see `import_data`)."""
    first = ds.files[0].path
    if not source.exists():
        raise RnnkitError(f"{source} does not exist; give the folder holding {ds.name}'s files "
                          f"(such as {first})")  # fmt: skip
    if source.is_file():
        if len(ds.files) != 1:
            raise RnnkitError(f"{ds.name} has {len(ds.files)} files: give the folder holding "
                              f"them (such as {first}), not one file")  # fmt: skip
        return {first: source}
    root = source
    if not (root / first).is_file() and first.partition("/")[0] == source.name:
        root = source.parent  # e.g. FSDD's recordings/ folder itself
    missing = [f.path for f in ds.files if not (root / f.path).is_file()]
    if missing:
        raise RnnkitError(f"{source} lacks {len(missing)} of the {len(ds.files)} files of "
                          f"{ds.name} (such as {missing[0]}); give the folder holding "
                          f"{first}")  # fmt: skip
    return {f.path: root / f.path for f in ds.files}


def _begin(root: Path, name: str) -> tuple[Path, int]:
    """The staging folder of ``name`` and a lock held on it (one fetch or import at a time)."""
    partial = root / PARTIAL
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise io.write_error(partial, err) from None
    lock = io.lock_file(partial / f"{name}.lock", f"data set {name!r}")
    return partial / name, lock


def _place(ds: DataSet, staging: Path, target: Path, origin: str) -> None:
    """Stamp the verified ``staging`` folder and rename it to ``target`` (a previous, broken
    copy there is moved aside and deleted)."""
    keep = {f.path for f in ds.files}
    for folder, _, names in os.walk(staging, topdown=False):
        for leftover in names:  # parts of archives, files of an older registry entry
            file = Path(folder, leftover)
            if file.relative_to(staging).as_posix() not in keep:
                file.unlink()
        if Path(folder) != staging and not os.listdir(folder):
            os.rmdir(folder)
    files = {}
    for f in ds.files:
        info = os.lstat(staging / f.path)
        files[f.path] = [info.st_size, info.st_mtime_ns]
    io.atomic_write_json(staging / STAMP, {"name": ds.name, "manifest_sha256": ds.manifest_sha256,
                                           "origin": origin, "files": files})  # fmt: skip
    old = None
    if os.path.lexists(target):
        old = staging.with_name(f"{ds.name}.old-{os.getpid()}")
        _remove(old)
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    """Delete ``path`` (a file, a link or a folder tree) if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _copy(source: Path, dest: Path, limit: int) -> None:
    """Copy ``source`` to the new file ``dest``, stopping past ``limit`` bytes (the check that
    follows then refuses it)."""
    with open(source, "rb") as f, os.fdopen(io.open_fd(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                            "wb") as out:  # fmt: skip
        copied = 0
        while copied <= limit and (chunk := f.read(1 << 20)):
            out.write(chunk)
            copied += len(chunk)


def _fetch_file(ds: DataSet, f: DataFile, mirror: str | None, staging: Path, bar) -> None:
    """Download ``f`` into ``staging`` (or extract it from its archive), checked."""
    dest = staging / f.path
    if dest.is_file() and not dest.is_symlink() and _problem(dest, f) is None:
        bar.update(f.size if mirror is not None or f.member is None else 0)
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if mirror is None and f.member is not None:
        _extract(_archive(f.url, staging, bar), f, part)
        where = f"{f.member} in {f.url}"
    else:
        url = f.url if mirror is None else mirror_url(mirror, ds.name, f.path)
        exact = None if f.gunzipped else f.size
        _download(url, part, exact, f.download_limit(), bar)
        where = url
    problem = _problem(part, f)
    if problem is not None:
        part.unlink(missing_ok=True)
        raise _Corrupt(f"{where} is corrupt ({problem}); nothing of {ds.name} was kept: try "
                       "again, or fetch from another --mirror")  # fmt: skip
    os.replace(part, dest)


def mirror_url(mirror: str, name: str, file: str) -> str:
    """Where a mirror keeps file ``file`` of data set ``name``: ``MIRROR/NAME/FILE``."""
    from urllib.parse import quote

    return f"{mirror.rstrip('/')}/{quote(name)}/{quote(file)}"


def _archive(url: str, staging: Path, bar) -> Path:
    """The archive at ``url``, downloaded once into ``staging`` (resumable like any file)."""
    folder = staging / ".archives"
    folder.mkdir(parents=True, exist_ok=True)
    done = folder / hashlib.sha256(url.encode()).hexdigest()[:16]
    if not done.is_file():
        part = done.with_name(done.name + ".part")
        _download(url, part, None, MAX_ARCHIVE_BYTES, bar)
        os.replace(part, done)
    return done


def _extract(archive: Path, f: DataFile, dest: Path) -> None:
    """Write member ``f.member`` of the tar archive ``archive`` to ``dest`` (bounded)."""
    import tarfile

    try:
        with tarfile.open(archive, "r:*") as tar:
            member = tar.getmember(str(f.member))
            source = tar.extractfile(member) if member.isfile() else None
            if source is None:
                raise KeyError(f.member)
            with os.fdopen(io.open_fd(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as out:
                copied = 0
                while copied <= f.size and (chunk := source.read(1 << 20)):
                    out.write(chunk)
                    copied += len(chunk)
    except KeyError:
        archive.unlink()
        raise _Corrupt(f"{f.url} holds no file {f.member}; it is not the archive the registry "
                       "names (try --mirror)") from None  # fmt: skip
    except (tarfile.TarError, EOFError, zlib.error) as err:
        archive.unlink()
        raise _Corrupt(f"{f.url} is not a readable tar archive ({err}); try again, or fetch "
                       "from a --mirror") from None  # fmt: skip


def _download(url: str, part: Path, exact: int | None, limit: int, bar) -> None:
    """Download ``url`` into ``part``, continuing what ``part`` already holds with a ``Range``
    request (a server that ignores it sends everything again). ``exact``: the size the file
    must have, if known; ``limit``: more bytes than this is a corrupt source.

    Raises:
        RnnkitError: an HTTP error, an unreachable host, a transfer cut off (``part`` is kept),
            a source larger than ``limit`` (`_Corrupt`).
    """
    import http.client
    import urllib.error
    import urllib.request

    offset = 0
    if os.path.lexists(part):
        info = os.lstat(part)
        if stat.S_ISREG(info.st_mode) and info.st_size <= limit:
            offset = info.st_size
        else:
            part.unlink()
    if exact is not None and offset == exact:
        return  # complete: the check follows
    headers = {"User-Agent": "rnnkit-data-registry"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT)  # fmt: skip
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # nothing past what we hold: the check decides
            return
        raise RnnkitError(f"cannot fetch {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise RnnkitError(f"cannot fetch {url} ({reason}); check the network, or fetch from a "
                          "mirror with --mirror URL") from None  # fmt: skip
    with response:
        status = getattr(response, "status", None)
        if offset and status == 206:
            given = response.headers.get("Content-Range", "")
            if not given.startswith(f"bytes {offset}-"):
                part.unlink()
                raise RnnkitError(f"{url} answered a request for bytes {offset}- with "
                                  f"{shorten(given)}; run the same command again to download "
                                  "it from the start")  # fmt: skip
        elif offset:
            offset = 0  # the whole file again
            bar.update(-os.lstat(part).st_size)
        length = response.headers.get("Content-Length", "")
        expected = int(length) if length.isdigit() else None
        fd = io.open_fd(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else os.O_TRUNC))
        received = 0
        with os.fdopen(fd, "wb") as out:
            while True:
                try:
                    chunk = response.read(1 << 16)
                except (OSError, http.client.HTTPException) as err:
                    raise RnnkitError(f"the download of {url} stopped after {offset + received} "
                                      f"bytes ({err}); run the same command again to resume "
                                      "it") from None  # fmt: skip
                if not chunk:
                    break
                if offset + received + len(chunk) > limit:
                    out.close()
                    part.unlink()
                    raise _Corrupt(f"{url} sent more than the {limit} bytes the registry "
                                   "expects; it is corrupt, nothing was kept")  # fmt: skip
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    total = offset + received
    if (expected is not None and received < expected) or (exact is not None and total < exact):
        want = exact if exact is not None else offset + (expected or 0)
        raise RnnkitError(f"the download of {url} stopped after {total} of {want} bytes; run "
                          "the same command again to resume it")  # fmt: skip


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(ds: DataSet, mirror: str | None, progress: bool | None):
    """A tqdm bar of the bytes of ``ds`` on stderr (by default only when it is a terminal)."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return _NoBar()
    from tqdm import tqdm

    sized = all(not f.gunzipped and (mirror is not None or f.member is None) for f in ds.files)
    return tqdm(total=ds.size if sized else None, desc=ds.name, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, leave=False)  # fmt: skip

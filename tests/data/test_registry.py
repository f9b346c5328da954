"""The data-set registry: `rnnkit data list|fetch|import|path`, the downloader against an HTTP
server on 127.0.0.1 (a good mirror, a corrupt file, a download cut off then resumed with Range,
a 404), imports, and task settings that name data sets. The toy data sets are made here."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from click.testing import CliRunner

from rnnkit.cli import main
from rnnkit.data import registry
from rnnkit.data.registry import DataFile, DataSet
from rnnkit.errors import RnnkitError

FILES = {
    "notes.txt": b"To be, or not to be, that is the question.\n" * 40,
    "deep/numbers.bin": bytes(range(256)) * 400,  # 100 KB: big enough to cut in the middle
}


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def toy(name: str = "toy", base: str = "http://canonical.invalid", files=None, main="") -> DataSet:
    files = FILES if files is None else files
    return DataSet(
        name,
        "a toy data set made by the test",
        tuple(
            DataFile(p, hashlib.sha256(b).hexdigest(), len(b), f"{base}/{p}")
            for p, b in files.items()
        ),  # fmt: skip
        "CC0",
        "nobody (2025)",
        "https://example.invalid/toy",
        main=main,
    )


@pytest.fixture
def table(monkeypatch) -> dict[str, DataSet]:
    """The registry's table, with the test's toy data sets added to it (mutable)."""
    sets = dict(registry.datasets())
    sets["toy"] = toy()
    monkeypatch.setattr(registry, "datasets", lambda: sets)
    return sets


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    """An empty data folder ($RNNKIT_DATA) for one test."""
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    return tmp_path / "data"


class Server:
    """An HTTP server on 127.0.0.1 serving ``root`` with Range requests, that can cut a file's
    first full answer short (``cut[path] = bytes``) and logs (path, Range header) per request."""

    def __init__(self, root: Path) -> None:
        self.root, self.cut, self.log = root, {}, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                rel = unquote(urlparse(self.path).path).lstrip("/")
                asked = self.headers.get("Range")
                server.log.append((rel, asked))
                file = server.root / rel
                if not file.is_file():
                    self.send_error(404, "Not Found")
                    return
                body = file.read_bytes()
                start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
                if start >= len(body) and asked:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206 if asked else 200)
                if asked:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                sent = body[start:]
                if rel in server.cut and not asked:
                    sent = sent[: server.cut.pop(rel)]  # then the connection closes
                self.wfile.write(sent)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    """A mirror folder (``MIRROR/toy/FILE``) served on 127.0.0.1."""
    root = tmp_path / "mirror"
    for rel, body in FILES.items():
        (root / "toy" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "toy" / rel).write_bytes(body)
    served = Server(root)
    yield served
    served.httpd.shutdown()
    served.httpd.server_close()


def leftovers(data: Path, name: str) -> list[str]:
    """Every file of data set ``name`` anywhere in the data folder (the lock file aside)."""
    return sorted(
        p.relative_to(data).as_posix()
        for p in data.rglob("*")
        if p.is_file() and name in p.relative_to(data).parts[:2] and not p.name.endswith(".lock")
    )


# --- list ---------------------------------------------------------------------------------------


def test_list_json_names_the_data_sets_with_licence_and_source(data):
    result = cli("data", "list", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["data_dir"] == str(data)
    sets = {entry["name"]: entry for entry in doc["datasets"]}
    for name in ("tiny-shakespeare", "jsb-chorales", "multi30k", "fsdd", "mr",
                 "airline-passengers", "nab", "sunspots", "sp500", "fashion-mnist"):  # fmt: skip
        entry = sets[name]
        assert entry["licence"] and entry["citation"] and entry["source"].startswith("https://")
        assert entry["present"] is False and entry["file_count"] == len(entry["files"]) > 0
        for f in entry["files"]:
            assert len(f["sha256"]) == 64 and f["size"] > 0 and f["url"].startswith("https://")
    assert sets["fsdd"]["file_count"] == 2500
    assert sets["fsdd"]["manifest_sha256"] == registry.FSDD_MANIFEST_SHA256
    shakespeare = sets["tiny-shakespeare"]["files"][0]
    assert shakespeare["url"].endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
    assert shakespeare["size"] == 1_115_394
    shown = cli("data", "list")
    assert shown.exit_code == 0 and "tiny-shakespeare" in shown.output
    assert "CC BY-SA" in shown.output


def test_the_tiny_shakespeare_sha256_is_the_real_files(dataset):
    real = dataset("tiny-shakespeare") / "tinyshakespeare.txt"  # skips without a copy
    listed = json.loads(cli("data", "list", "--json").output)["datasets"]
    entry = next(e for e in listed if e["name"] == "tiny-shakespeare")
    assert entry["files"][0]["sha256"] == hashlib.sha256(real.read_bytes()).hexdigest()
    assert entry["present"] is True


# --- fetch --------------------------------------------------------------------------------------


def test_fetch_from_a_mirror_places_the_verified_set(table, data, server):
    result = cli("data", "fetch", "toy", "--mirror", server.url, "--progress")
    assert result.exit_code == 0, result.output
    folder = data / "toy"
    assert "fetched toy (2 files" in result.output and str(folder) in result.output
    for rel, body in FILES.items():
        assert (folder / rel).read_bytes() == body
    assert sorted(rel for rel, _ in server.log) == ["toy/deep/numbers.bin", "toy/notes.txt"]
    assert leftovers(data, "toy") == ["toy/.rnnkit-verified", "toy/deep/numbers.bin",
                                      "toy/notes.txt"]  # fmt: skip
    assert cli("data", "path", "toy").output == f"{folder}\n"
    again = cli("data", "fetch", "toy", "--mirror", server.url)
    assert again.exit_code == 0 and "already here" in again.output and len(server.log) == 2


def test_a_corrupt_file_exits_2_and_leaves_nothing_of_the_set(table, data, server):
    body = bytearray(FILES["deep/numbers.bin"])
    body[5000] ^= 1
    (server.root / "toy" / "deep" / "numbers.bin").write_bytes(bytes(body))
    result = cli("data", "fetch", "toy", "--mirror", server.url)
    one_line_error(result, f"{server.url}/toy/deep/numbers.bin is corrupt", "sha256",
                   "nothing of toy was kept")  # fmt: skip
    assert leftovers(data, "toy") == []
    one_line_error(cli("data", "path", "toy"), "rnnkit data fetch toy")


def test_a_file_of_the_wrong_size_is_corrupt_too(table, data, server):
    (server.root / "toy" / "notes.txt").write_bytes(FILES["notes.txt"] + b"more")
    one_line_error(cli("data", "fetch", "toy", "--mirror", server.url), "is corrupt")
    assert leftovers(data, "toy") == []


def test_a_download_cut_off_resumes_with_a_range_request(table, data, server):
    whole = len(FILES["deep/numbers.bin"])
    server.cut["toy/deep/numbers.bin"] = 40_000
    first = cli("data", "fetch", "toy", "--mirror", server.url)
    one_line_error(first, f"stopped after 40000 of {whole} bytes",
                   "run the same command again to resume it")  # fmt: skip
    assert not (data / "toy").exists()  # the set is not in place: `path` says to fetch it
    one_line_error(cli("data", "path", "toy"), "rnnkit data fetch toy")
    part = data / ".rnnkit-partial" / "toy" / "deep" / "numbers.bin.part"
    assert part.stat().st_size == 40_000
    second = cli("data", "fetch", "toy", "--mirror", server.url)
    assert second.exit_code == 0, second.output
    assert server.log[-1] == ("toy/deep/numbers.bin", "bytes=40000-")
    assert (data / "toy" / "deep" / "numbers.bin").read_bytes() == FILES["deep/numbers.bin"]
    assert not (data / ".rnnkit-partial" / "toy").exists()


def test_a_resumed_part_that_turns_out_corrupt_is_discarded(table, data, server):
    staging = data / ".rnnkit-partial" / "toy" / "deep"
    staging.mkdir(parents=True)
    (staging / "numbers.bin.part").write_bytes(b"\xff" * 1000)  # not the file's first bytes
    result = cli("data", "fetch", "toy", "--mirror", server.url)
    one_line_error(result, "is corrupt")
    assert ("toy/deep/numbers.bin", "bytes=1000-") in server.log
    assert leftovers(data, "toy") == []
    assert cli("data", "fetch", "toy", "--mirror", server.url).exit_code == 0  # from scratch


def test_a_404_is_one_line_naming_the_url(table, data, server):
    (server.root / "toy" / "notes.txt").unlink()
    result = cli("data", "fetch", "toy", "--mirror", server.url + "/")
    one_line_error(result, f"cannot fetch {server.url}/toy/notes.txt: HTTP 404")
    assert not (data / "toy").exists()


def test_an_unreachable_host_is_one_line(table, data, server):
    server.httpd.shutdown()
    server.httpd.server_close()
    one_line_error(cli("data", "fetch", "toy", "--mirror", server.url), "cannot fetch")
    one_line_error(cli("data", "fetch", "toy", "--mirror", "ftp://x"), "--mirror must be")


def test_fetch_from_canonical_urls_an_archive_and_a_recompressed_gzip(table, data, server):
    """Canonical sources as the real registry has them: members of a tar.gz (MR) and gzip
    files whose sha256 is of their content (Fashion-MNIST, recompressed by Debian)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for rel, body in FILES.items():
            info = tarfile.TarInfo(f"inside/{rel}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    (server.root / "archive.tar.gz").write_bytes(archive.getvalue())
    content = b"\x00\x00\x08\x01" + bytes(5000)
    (server.root / "images.gz").write_bytes(gzip.compress(content, mtime=12345))
    table["bundle"] = DataSet(
        "bundle", "a toy", tuple(
            DataFile(rel, hashlib.sha256(body).hexdigest(), len(body),
                     f"{server.url}/archive.tar.gz", member=f"inside/{rel}")
            for rel, body in FILES.items()) + (
            DataFile("images.gz", hashlib.sha256(content).hexdigest(), len(content),
                     f"{server.url}/images.gz", gunzipped=True),),
        "CC0", "nobody", "https://example.invalid")  # fmt: skip
    result = cli("data", "fetch", "bundle")
    assert result.exit_code == 0, result.output
    assert [rel for rel, _ in server.log].count("archive.tar.gz") == 1
    assert (data / "bundle" / "deep" / "numbers.bin").read_bytes() == FILES["deep/numbers.bin"]
    assert gzip.decompress((data / "bundle" / "images.gz").read_bytes()) == content
    assert leftovers(data, "bundle") == ["bundle/.rnnkit-verified", "bundle/deep/numbers.bin",
                                         "bundle/images.gz", "bundle/notes.txt"]  # fmt: skip
    # the same content compressed differently imports too; other content does not
    other = data.parent / "other"
    other.mkdir()
    (other / "images.gz").write_bytes(gzip.compress(content, compresslevel=1, mtime=1))
    for rel, body in FILES.items():
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_bytes(body)
    assert cli("data", "import", "bundle", other).exit_code == 0
    (other / "images.gz").write_bytes(gzip.compress(content + b"!"))
    one_line_error(cli("data", "import", "bundle", other), "images.gz", "nothing was imported")


# --- import and path ----------------------------------------------------------------------------


def write_copy(folder: Path, files=None) -> Path:
    for rel, body in (FILES if files is None else files).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
    return folder


def test_import_a_folder_verifies_every_file(table, data, tmp_path):
    source = write_copy(tmp_path / "copy")
    result = cli("data", "import", "toy", source)
    assert result.exit_code == 0 and "imported toy (2 files" in result.output, result.output
    assert registry.is_present("toy") and registry.path("toy") == data / "toy"
    assert (data / "toy" / "notes.txt").read_bytes() == FILES["notes.txt"]
    (source / "notes.txt").write_bytes(b"something else\n")
    one_line_error(cli("data", "import", "toy", source), f"{source / 'notes.txt'} is not toy's "
                   "notes.txt", "nothing was imported")  # fmt: skip
    assert registry.is_present("toy")  # the verified copy stays
    (source / "notes.txt").unlink()
    one_line_error(cli("data", "import", "toy", source), "lacks 1 of the 2 files of toy",
                   "notes.txt")  # fmt: skip
    one_line_error(cli("data", "import", "toy", source / "deep" / "numbers.bin"),
                   "toy has 2 files: give the folder")  # fmt: skip
    one_line_error(cli("data", "import", "toy", tmp_path / "nowhere"), "does not exist")
    one_line_error(cli("data", "import", "nope", source), "no data set named 'nope'")


def test_import_takes_a_one_file_set_as_its_file_or_its_folder(table, data, tmp_path):
    table["one"] = toy("one", files={"only.txt": b"just this\n"})
    write_copy(tmp_path / "a", {"renamed.txt": b"just this\n"})
    assert cli("data", "import", "one", tmp_path / "a" / "renamed.txt").exit_code == 0
    write_copy(tmp_path / "b", {"only.txt": b"just this\n"})
    assert cli("data", "import", "one", tmp_path / "b").exit_code == 0
    assert (data / "one" / "only.txt").read_bytes() == b"just this\n"


def test_import_accepts_the_folder_of_the_first_path_component(table, data, tmp_path):
    write_copy(tmp_path / "copy")
    result = cli("data", "import", "toy", tmp_path / "copy" / "deep")  # like fsdd/recordings
    one_line_error(result, "lacks 2 of the 2 files")  # notes.txt is beside deep/, not in it
    table["deep"] = toy("deep", files={"deep/a.bin": b"a", "deep/b.bin": b"b"})
    write_copy(tmp_path / "other", {"deep/a.bin": b"a", "deep/b.bin": b"b"})
    assert cli("data", "import", "deep", tmp_path / "other" / "deep").exit_code == 0


def test_path_of_a_missing_set_gives_the_fetch_command(data):
    result = cli("data", "path", "jsb-chorales")
    one_line_error(result, "data set 'jsb-chorales' is not here; fetch it with "
                   "`rnnkit data fetch jsb-chorales` (or `rnnkit data import jsb-chorales PATH` "
                   "for a local copy)")  # fmt: skip
    with pytest.raises(RnnkitError, match="rnnkit data fetch fsdd"):
        registry.path("fsdd")


def test_a_file_changed_after_verification_makes_the_set_absent(table, data, tmp_path):
    registry.import_data("toy", write_copy(tmp_path / "copy"))
    assert registry.is_present("toy")
    with open(data / "toy" / "notes.txt", "ab") as f:
        f.write(b"!")
    assert not registry.is_present("toy")
    one_line_error(cli("data", "path", "toy"), "incomplete or changed since it was verified",
                   "rnnkit data fetch toy")  # fmt: skip
    (data / "toy" / "notes.txt").unlink()
    one_line_error(cli("data", "path", "toy"), "incomplete or changed")
    registry.import_data("toy", tmp_path / "copy")  # a fresh copy replaces the broken one
    assert registry.is_present("toy")


def test_the_data_folder_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("RNNKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert registry.data_dir() == tmp_path / "cache" / "rnnkit" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as XDG says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert registry.data_dir() == tmp_path / "home" / ".cache" / "rnnkit" / "data"
    monkeypatch.setenv("RNNKIT_DATA", str(tmp_path / "mine"))
    assert registry.data_dir() == tmp_path / "mine"


def test_fsdd_manifest_is_the_registry_s():
    fsdd = registry.get("fsdd")
    assert len(fsdd.files) == 2500 and fsdd.main == "recordings"
    assert fsdd.manifest_sha256 == registry.FSDD_MANIFEST_SHA256
    assert all(f.path.startswith("recordings/") and f.path.endswith(".wav") for f in fsdd.files)


# --- data sets named by tasks -------------------------------------------------------------------


def test_resolve_names_a_set_s_main_file_or_a_file_in_it(table, data, tmp_path, monkeypatch):
    table["one"] = toy("one", files={"only.txt": b"just this\n"}, main="only.txt")
    with pytest.raises(RnnkitError, match="rnnkit data fetch one"):
        registry.resolve("one")
    registry.import_data("one", write_copy(tmp_path / "c", {"only.txt": b"just this\n"}))
    registry.import_data("toy", write_copy(tmp_path / "copy"))
    assert registry.resolve("one") == str(data / "one" / "only.txt")
    assert registry.resolve("toy") == str(data / "toy")
    assert registry.resolve("toy/deep/numbers.bin") == str(data / "toy" / "deep" / "numbers.bin")
    assert registry.resolve("no-such-thing.csv") == "no-such-thing.csv"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()
    assert registry.resolve("toy") == "toy"  # an existing path wins over a name


def test_fetch_a_real_data_set_from_a_mirror(dataset, data, tmp_path):
    """The real registry entry of JSB, served by a mirror on 127.0.0.1 (needs a copy)."""
    real = dataset("jsb-chorales")  # in the session's data folder; this test has its own
    mirror = tmp_path / "mirror" / "jsb-chorales"
    mirror.mkdir(parents=True)
    (mirror / "jsb-chorales-quarter.json").write_bytes(
        (real / "jsb-chorales-quarter.json").read_bytes()
    )
    served = Server(tmp_path / "mirror")
    try:
        result = cli("data", "fetch", "jsb-chorales", "--mirror", served.url)
        assert result.exit_code == 0, result.output
        assert registry.path("jsb-chorales") == data / "jsb-chorales"
    finally:
        served.httpd.shutdown()
        served.httpd.server_close()
    assert os.environ["RNNKIT_DATA"] == str(data)

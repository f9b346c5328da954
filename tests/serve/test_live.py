"""The server on a real socket (uvicorn in a thread, or `rnnkit serve` in a process): stream
slots and disconnects, SIGTERM. tests/serve/test_playground.py drives the page in a browser."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'rnnkit[serve]'")

import httpx  # noqa: E402
from serve_runs import charlm_run, sentiment_run  # noqa: E402

from rnnkit.serve.app import Limits  # noqa: E402
from rnnkit.serve.background import free_port, serving  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    return {"shakespeare": charlm_run(root), "reviews": sentiment_run(root)}


def test_a_full_run_refuses_more_streams_and_a_leaving_client_frees_its_slot(runs):
    with serving(runs, Limits(max_streams=1, max_tokens=10**7)) as (url, app):
        body = {"prompt": "First", "max_tokens": 10**7, "stream": True}  # until the client leaves
        with httpx.Client(base_url=url, timeout=30) as client:
            with client.stream("POST", "/v1/runs/shakespeare/generate", json=body) as first:
                lines = first.iter_lines()  # kept: a closed iterator closes the response
                line = next(lines)
                assert json.loads(line[len("data: ") :])["step"] == 0
                second = client.post("/v1/runs/shakespeare/generate", json=body)
                assert second.status_code == 429 and "streams already" in second.json()["error"]
                lines.close()
            run = app.state.served["shakespeare"]
            for _ in range(500):  # the scheduler drops the stream at its next step
                if run.streams == 0 and not run.scheduler.active:
                    break
                time.sleep(0.01)
            assert run.streams == 0 and not run.scheduler.active
            third = client.post("/v1/runs/shakespeare/generate", json={**body, "max_tokens": 5})
            assert third.status_code == 200 and '"done": true' in third.text


def test_sigterm_drains_and_exits_zero(runs):
    port = free_port()
    command = [sys.executable, "-m", "rnnkit", "serve", *map(str, runs.values()), "--port",
               str(port)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        names = [r["name"] for r in httpx.get(f"http://127.0.0.1:{port}/v1/runs").json()["runs"]]
        assert sorted(names) == sorted(runs)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
        assert time.monotonic() - started < 15 and "stopped" in out
    finally:
        process.kill()

"""The HTTP API in-process (httpx on the ASGI app): routes, batching of concurrent requests,
streamed generation stepped together, and every client mistake a 4xx JSON error."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

pytest.importorskip("fastapi", reason="the serve extra: pip install 'rnnkit[serve]'")

from serve_runs import charlm_run, sentiment_run  # noqa: E402

import rnnkit  # noqa: E402
from rnnkit.serve.app import Limits, create_app  # noqa: E402

TEXTS = ["a wonderful film", "tedious , dull and boring junk", "fun", "zzz fun", "i loved it"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    return {"shakespeare": charlm_run(root), "reviews": sentiment_run(root)}


@pytest.fixture(scope="module")
def predictors(runs):
    return {name: rnnkit.load(path) for name, path in runs.items()}


def call(app, requests):
    """Send ``requests`` [(method, path, body or bytes)] at once; their responses in order."""

    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            jobs = []
            for method, path, body in requests:
                data = body if isinstance(body, bytes) else None
                payload = None if isinstance(body, bytes) or body is None else body
                headers = {"Content-Type": "application/json"} if data is not None else None
                jobs.append(client.request(method, path, json=payload, content=data,
                                           headers=headers))  # fmt: skip
            return await asyncio.gather(*jobs)

    return asyncio.run(send())


def test_health_page_runs_and_openapi(predictors):
    app = create_app(predictors)
    paths = ["/health", "/", "/v1/runs", "/openapi.json"]
    health, page, runs, schema = call(app, [("GET", path, None) for path in paths])
    assert health.json() == {"status": "ok", "runs": 2}
    assert page.headers["content-type"].startswith("text/html") and "/static/app.js" in page.text
    listed = {r["name"]: r for r in runs.json()["runs"]}
    assert (
        listed["shakespeare"]["task"] == "charlm" and "generate" in listed["shakespeare"]["routes"]
    )
    assert listed["reviews"]["task"] == "sentiment" and listed["reviews"]["settings"]["embed"] == 8
    paths = schema.json()["paths"]
    assert {"/health", "/v1/runs", "/v1/runs/{name}/predict", "/v1/runs/{name}/generate"} <= set(
        paths
    )


def test_concurrent_predicts_run_as_batches_and_answer_as_alone(predictors):
    app = create_app(predictors, Limits(window=0.05))
    requests = [("POST", "/v1/runs/reviews/predict", {"inputs": [TEXTS[i % len(TEXTS)]]})
                for i in range(64)]  # fmt: skip
    responses = call(app, requests)
    assert all(r.status_code == 200 for r in responses)
    alone = {t: predictors["reviews"].predict([t])[0].to_dict() for t in TEXTS}
    for i, response in enumerate(responses):
        (got,) = response.json()["outputs"]
        want = alone[TEXTS[i % len(TEXTS)]]
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert got["attention"] == pytest.approx(want["attention"], abs=1e-5)
    assert app.state.served["reviews"].batcher.batches < 16  # 64 requests, few model calls


def events_of(response) -> list[dict]:
    lines = [line for line in response.text.split("\n\n") if line.strip()]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[len("data: ") :]) for line in lines]


def test_streams_are_stepped_together_and_draw_what_they_draw_alone(predictors):
    app = create_app(predictors)
    settings = [{"prompt": "First", "max_tokens": 12, "seed": s, "stream": True} for s in range(6)]
    responses = call(app, [("POST", "/v1/runs/shakespeare/generate", body) for body in settings])
    for body, response in zip(settings, responses):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = events_of(response)
        assert len(events) == 13 and events[-1]["done"] and events[-1]["tokens"] == 12
        text = "".join(e["token"] for e in events[:-1])
        expected = predictors["shakespeare"].generate("First", 12, seed=body["seed"]).text
        assert text == events[-1]["text"] == expected
    assert app.state.served["shakespeare"].scheduler.steps < 6 * 12  # stepped together
    once = {"prompt": "First", "seed": 3, "max_tokens": 12}
    (plain,) = call(app, [("POST", "/v1/runs/shakespeare/generate", once)])
    assert plain.json()["text"] == predictors["shakespeare"].generate("First", 12, seed=3).text


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/runs/reviews/predict", b"{not json", 400, "not valid JSON"),
    ("POST", "/v1/runs/nobody/predict", {"inputs": ["x"]}, 404, "no run named 'nobody'"),
    ("POST", "/v1/runs/..%2F..%2Fetc/predict", {"inputs": ["x"]}, 404, "no such route"),
    ("GET", "/v1/runs/../../etc/passwd", None, 404, "no such route"),
    ("POST", "/v1/runs/reviews/predict", {"inputs": ["x" * (3 << 20)]}, 413, "larger than"),
    ("POST", "/v1/runs/reviews/predict", {"inputs": ["fine"] * 65}, 413, "1 to 64 inputs"),
    ("POST", "/v1/runs/reviews/predict", {"inputs": []}, 422, "1 to 64 inputs"),
    ("POST", "/v1/runs/reviews/predict", {"inputs": ["   "]}, 400, "the text is empty"),
    ("POST", "/v1/runs/reviews/predict", {"inputs": [{"wav": "%%%"}]}, 422, "not base64"),
    ("POST", "/v1/runs/shakespeare/generate", {"max_tokens": 1e9}, 422, "max_tokens"),
    ("POST", "/v1/runs/shakespeare/generate", {"max_tokens": 10 ** 9}, 422, "at most 2000"),
    ("POST", "/v1/runs/shakespeare/generate", {"temperature": -1}, 422, "temperature"),
    ("POST", "/v1/runs/shakespeare/generate", {"prompt": "\u2603", "stream": True}, 400, "prompt"),
    ("POST", "/v1/runs/reviews/generate", {"prompt": "x"}, 400, "serves charlm runs"),
    ("POST", "/v1/runs/reviews/predict", {"inputs": ["x"], "horizon": 3}, 400,
     "horizon does not apply to sentiment runs"),
])  # fmt: skip
def test_client_mistakes_are_4xx_json_and_the_server_stays_healthy(
    predictors, method, path, body, status, message
):
    app = create_app(predictors)
    response, health = call(app, [(method, path, body), ("GET", "/health", None)])
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert health.json()["status"] == "ok"


def test_a_token_guards_the_api_but_not_the_page(predictors):
    app = create_app(predictors, token="s3cret")
    denied, page, health = call(app, [("GET", "/v1/runs", None), ("GET", "/", None),
                                      ("GET", "/health", None)])  # fmt: skip
    assert denied.status_code == 401 and "Bearer" in denied.json()["error"]
    assert page.status_code == 200 and health.status_code == 200

    async def with_token():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/v1/runs", headers={"Authorization": "Bearer s3cret"})

    assert asyncio.run(with_token()).status_code == 200

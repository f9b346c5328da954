"""Load test of `rnnkit serve` on loopback: batched predicts and batched generation streams;
prints JSON.

    python -m benchmarks.serve [--charlm RUN] [--sentiment RUN] [--clients 64] [--streams 32]
                               [--repeat 3] [--server-env NAME=VALUE ...]

Without RUN arguments it makes runs of the docs' architectures (docs/charlm.md: a 3 x 512 LSTM
over characters with embedding 128; docs/sentiment.md: a bidirectional LSTM of 100 over word
embeddings of 300, attention pooling) trained for one step on a synthetic text: serving speed
depends on the architecture, not on the weights.

The server runs in a process of its own (``python -m rnnkit.serve``), the clients here.
Predict: the same sentiment requests (one sentence each) sent one at a time, then by
``--clients`` concurrent clients; requests/s of each and their ratio, p50/p99 latency.
Generation: one stream of ``--tokens`` tokens alone, then ``--streams`` at once, the pair
``--repeat`` times; aggregate tokens/s of each, the ratio of their medians, p99 time to first
token, and the CPU time the server and the clients spent per token (they share the machine).
Every request is counted by status; the load average before and after is printed with the
figures (other work on the machine skews the ratio). ``--server-env`` sets variables in the
server's environment (e.g. OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import httpx

from rnnkit.serve.background import free_port

WORDS = ["the", "a", "film", "story", "acting", "plot", "moving", "dull", "wonderful", "boring",
         "great", "awful", "funny", "slow", "characters", "music", "ending", "scenes", "director",
         "cast"]  # fmt: skip


def make_runs(root: Path) -> dict[str, Path]:
    """One-step runs of the docs' architectures on synthetic data."""
    from rnnkit.tasks import charlm, sentiment

    rng = random.Random(0)
    text = "\n".join(" ".join(rng.choices(WORDS, k=12)) for _ in range(3000))
    (root / "text.txt").write_text(text)
    loop = {"max_steps": 1, "eval_every": 1, "progress": "none"}
    charlm.train({"text": str(root / "text.txt"), "hidden": 512, "layers": 3, "embed": 128,
                  "eval_tokens": 256, **loop}, out=str(root / "charlm"))  # fmt: skip
    data = root / "mr"
    data.mkdir()
    for polarity in ("pos", "neg"):
        lines = (" ".join(rng.choices(WORDS, k=rng.randint(5, 30))) for _ in range(400))
        (data / f"rt-polarity.{polarity}").write_text("\n".join(lines) + "\n")
    sentiment.train({"data": str(data), "min_count": 1, **loop}, out=str(root / "sentiment"))
    return {"charlm": root / "charlm", "sentiment": root / "sentiment"}


class Server(NamedTuple):
    url: str
    pid: int


@contextlib.contextmanager
def server_process(runs: dict[str, Path], env: dict[str, str] | None = None):
    """``rnnkit serve`` of ``runs`` in a process of its own (the clients here do not share its
    interpreter), ``env`` added to its environment; yields its `Server`."""
    port = free_port()
    command = [sys.executable, "-m", "rnnkit.serve", *map(str, runs.values()), "--port", str(port),
               "--max-streams", "256"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        yield Server(url, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def predicts(url: str, sentences: list[str], clients: int) -> dict:
    """Send ``sentences`` (one per request) with ``clients`` concurrent clients."""
    statuses: Counter = Counter()
    latencies: list[float] = []
    queue = list(sentences)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while queue:
                sentence = queue.pop()
                start = time.perf_counter()
                response = await client.post("/v1/runs/sentiment/predict",
                                             json={"inputs": [sentence]})  # fmt: skip
                latencies.append(time.perf_counter() - start)
                statuses[response.status_code] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - start
    return {"requests": len(sentences), "seconds": round(seconds, 3),
            "requests_per_s": round(len(sentences) / seconds, 1),
            "p50_ms": round(1e3 * percentile(latencies, 0.5), 2),
            "p99_ms": round(1e3 * percentile(latencies, 0.99), 2),
            "statuses": dict(statuses)}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of process ``pid`` so far (Linux: /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def streams(server: Server, count: int, tokens: int) -> dict:
    """``count`` concurrent streams of ``tokens`` tokens each."""
    url = server.url
    statuses: Counter = Counter()
    first: list[float] = []
    received = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def one(seed: int) -> None:
            nonlocal received
            body = {"prompt": "the film", "max_tokens": tokens, "seed": seed, "stream": True}
            start = time.perf_counter()
            async with client.stream("POST", "/v1/runs/charlm/generate", json=body) as response:
                statuses[response.status_code] += 1
                async for line in response.aiter_lines():
                    event = json.loads(line[len("data: ") :]) if line.startswith("data: ") else {}
                    if "token" in event:
                        if event["step"] == 0:
                            first.append(time.perf_counter() - start)
                        received += 1

        start, cpu = time.perf_counter(), (cpu_seconds(server.pid), time.process_time())
        await asyncio.gather(*(one(seed) for seed in range(count)))
        seconds = time.perf_counter() - start
        server_cpu, client_cpu = cpu_seconds(server.pid) - cpu[0], time.process_time() - cpu[1]
    per_token = 1e3 / max(received, 1)
    return {"streams": count, "tokens": received, "seconds": round(seconds, 3),
            "tokens_per_s": round(received / seconds, 1),
            "p99_first_token_ms": round(1e3 * percentile(first, 0.99), 2),
            "server_cpu_ms_per_token": round(server_cpu * per_token, 3),
            "client_cpu_ms_per_token": round(client_cpu * per_token, 3),
            "statuses": dict(statuses)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charlm", help="a charlm run (default: one made here)")
    parser.add_argument("--sentiment", help="a sentiment run (default: one made here)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="one stream, then many: N times")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="a variable for the server's environment (repeatable)")  # fmt: skip
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        runs = make_runs(Path(folder)) if not (args.charlm and args.sentiment) else {}
        runs = {"charlm": Path(args.charlm or runs["charlm"]),
                "sentiment": Path(args.sentiment or runs["sentiment"])}  # fmt: skip
        rng = random.Random(1)
        sentences = [" ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
                     for _ in range(args.requests)]  # fmt: skip
        env = dict(item.split("=", 1) for item in args.server_env)
        with server_process(runs, env) as server:
            url = server.url
            asyncio.run(predicts(url, sentences[:16], 1))  # warm-up
            alone = asyncio.run(predicts(url, sentences[: args.requests // 4], 1))
            together = asyncio.run(predicts(url, sentences, args.clients))
            asyncio.run(streams(server, 1, 10))  # warm-up
            pairs = [(asyncio.run(streams(server, 1, args.tokens)),
                      asyncio.run(streams(server, args.streams, args.tokens)))
                     for _ in range(args.repeat)]  # fmt: skip
    print(json.dumps({
        "runs": {k: str(v) for k, v in runs.items()} if args.charlm else "made here (1 step)",
        "predict": {"one_at_a_time": alone, "concurrent": together,
                    "speedup": round(together["requests_per_s"] / alone["requests_per_s"], 2)},
        "generate": generation_summary(pairs),
        "server_env": env,
        "threads": __import__("torch").get_num_threads(),
        "load_average": {"before": load_before, "after": os.getloadavg()},
    }, indent=2))  # fmt: skip


def generation_summary(pairs: list[tuple[dict, dict]]) -> dict:
    """The (one stream, many streams) runs and the ratio of their median tokens/s."""
    one = statistics.median(a["tokens_per_s"] for a, _ in pairs)
    many = statistics.median(b["tokens_per_s"] for _, b in pairs)
    return {"one_stream_tokens_per_s": [a["tokens_per_s"] for a, _ in pairs],
            "concurrent_tokens_per_s": [b["tokens_per_s"] for _, b in pairs],
            "speedup_of_medians": round(many / one, 2),
            "speedups": [round(b["tokens_per_s"] / a["tokens_per_s"], 2) for a, b in pairs],
            "p99_first_token_ms": [b["p99_first_token_ms"] for _, b in pairs],
            "server_cpu_ms_per_token": [[r["server_cpu_ms_per_token"] for r in pair]
                                        for pair in pairs],
            "client_cpu_ms_per_token": [[r["client_cpu_ms_per_token"] for r in pair]
                                        for pair in pairs],
            "runs": [{"one_stream": a, "concurrent": b} for a, b in pairs]}  # fmt: skip


if __name__ == "__main__":
    main()

"""Requests that arrive together run as one batch: `Batcher`.

Each served run has one batcher and one worker thread. A request's inputs wait in a queue; the
collector takes the first waiting request, then whatever else arrives within ``window``
seconds, up to ``max_inputs`` inputs, and runs the ones with the same options as one
``predictor.predict`` call on the worker thread (the predictors pad inputs of unequal length
with ``lengths``, and a batch answers what each input answers alone). A batch whose call fails
is run again request by request, so that a bad input fails only its own request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from typing import Any

from rnnkit.predictor import Predictor, Result


@dataclasses.dataclass
class _Request:
    inputs: list[Any]
    options: dict[str, Any]
    answer: asyncio.Future


class Batcher:
    """Batches ``predictor.predict`` calls (see the module docstring)."""

    def __init__(self, predictor: Predictor, window: float = 0.005, max_inputs: int = 256):
        self.predictor, self.window, self.max_inputs = predictor, window, max_inputs
        self.worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rnnkit-run")
        self.queue: asyncio.Queue[_Request] | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0  # calls of predict, for the tests and the benchmark

    async def predict(self, inputs: list[Any], options: dict[str, Any]) -> list[Result]:
        """The results of ``inputs`` with ``options``, batched with other requests."""
        if self.queue is None:  # created in the server's event loop, on first use
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._collect())
        answer = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(inputs, options, answer))
        return await answer

    async def run(self, function, *args) -> Any:
        """``function(*args)`` on this run's worker thread (one model call at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self.worker, function, *args)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.worker.shutdown(wait=False, cancel_futures=True)

    async def _collect(self) -> None:
        """Forever: gather a batch of waiting requests and answer them."""
        while True:
            batch = [await self.queue.get()]
            deadline = asyncio.get_running_loop().time() + self.window
            while sum(len(r.inputs) for r in batch) < self.max_inputs:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), max(remaining, 0)))
                except asyncio.TimeoutError:
                    break
            for group in _same_options(batch):
                await self._answer(group)

    async def _answer(self, group: list[_Request]) -> None:
        """Run ``group`` (same options) as one call; on failure, each request alone."""
        inputs = [item for request in group for item in request.inputs]
        try:
            results = await self.run(self._call, inputs, group[0].options)
        except Exception as err:
            if len(group) == 1:
                _settle(group[0], error=err)
                return
            for request in group:
                await self._answer([request])
            return
        start = 0
        for request in group:
            _settle(request, results[start : start + len(request.inputs)])
            start += len(request.inputs)

    def _call(self, inputs: list[Any], options: dict[str, Any]) -> list[Result]:
        self.batches += 1
        return self.predictor.predict(inputs, **options)


def _same_options(batch: list[_Request]) -> list[list[_Request]]:
    """``batch`` split into groups of requests with equal options, in arrival order."""
    groups: list[list[_Request]] = []
    for request in batch:
        for group in groups:
            if group[0].options == request.options:
                group.append(request)
                break
        else:
            groups.append([request])
    return groups


def _settle(request: _Request, results: list[Result] | None = None, error=None) -> None:
    """Answer ``request`` unless its client has gone (its future cancelled)."""
    if request.answer.done():
        return
    if error is not None:
        request.answer.set_exception(error)
    else:
        request.answer.set_result(results)

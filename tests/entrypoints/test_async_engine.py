"""The engine thread and per-request queues, against a scripted engine (no model, no HTTP):
requests added while others run, abort on close, refusals and failures that stay with their
request, metrics updated from the engine thread."""

import asyncio
import threading
from types import SimpleNamespace
from typing import NamedTuple

import pytest

pytest.importorskip("prometheus_client")

from fastcot.entrypoints.async_engine import AsyncEngine, SampleDelta, Update  # noqa: E402
from fastcot.entrypoints.errors import APIError  # noqa: E402
from fastcot.entrypoints.metrics import ServerMetrics  # noqa: E402


class Output(NamedTuple):
    request_id: str
    update: Update


class ScriptedEngine:
    """Each request emits `length` one-token deltas ("t0", "t1", ...) in consecutive steps.
    A prompt [-1] is refused at add; a step raises while a request with prompt [-2] runs."""

    def __init__(self):
        self.running: dict[str, list] = {}
        self.aborted: list[str] = []
        self.thread_ids = set()
        self.steps = 0

    def add_request(self, request_id, prompt, params):
        self.thread_ids.add(threading.get_ident())
        if prompt == [-1]:
            raise ValueError("prompt [-1] is refused")
        self.running[request_id] = [prompt, params["length"], 0]

    def abort_request(self, request_id):
        self.thread_ids.add(threading.get_ident())
        self.aborted.append(request_id)
        self.running.pop(request_id, None)

    def has_unfinished_requests(self):
        return bool(self.running)

    def stats(self):
        return SimpleNamespace(num_running_requests=len(self.running), num_waiting_requests=0, kv_cache_usage=0.5)

    def step(self):
        self.thread_ids.add(threading.get_ident())
        self.steps += 1
        if any(prompt == [-2] for prompt, _, _ in self.running.values()):
            self.running.clear()
            raise RuntimeError("boom")
        outputs = []
        for rid, state in list(self.running.items()):
            _, length, done = state
            finished = done + 1 == length
            delta = SampleDelta(0, f"t{done}", "", 1, 0, None, "length" if finished else None)
            outputs.append(Output(rid, Update((delta,), finished, 1)))
            state[2] += 1
            if finished:
                del self.running[rid]
        return outputs


def read(output):
    return output.update


async def collect(group):
    text = []
    while not group.finished:
        _, update = await group.get(timeout=10)
        text += [s.text for s in update.samples]
    group.close()
    return text


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_requests_added_while_others_run_all_complete_on_the_engine_thread():
    engine = ScriptedEngine()

    async def main():
        async_engine = AsyncEngine(engine, read)
        async_engine.start()
        try:
            first = await async_engine.add_requests([("a", [1], {"length": 30})])
            await first.get(timeout=10)
            later = [await async_engine.add_requests([(f"b{i}", [1], {"length": 5 + i})]) for i in range(4)]
            results = await asyncio.gather(collect(first), *map(collect, later))
        finally:
            async_engine.shutdown()
        return results

    results = run(main())
    assert results[0] == [f"t{i}" for i in range(1, 30)]  # the first delta was read above
    for i, text in enumerate(results[1:]):
        assert text == [f"t{j}" for j in range(5 + i)]
    assert engine.thread_ids and threading.get_ident() not in engine.thread_ids
    assert len(engine.thread_ids) == 1


def test_closing_an_unfinished_request_aborts_it():
    engine = ScriptedEngine()

    async def main():
        async_engine = AsyncEngine(engine, read)
        async_engine.start()
        try:
            group = await async_engine.add_requests([("a", [1], {"length": 10**6})])
            await group.get(timeout=10)
            group.close()
            for _ in range(200):
                if not engine.running:
                    break
                await asyncio.sleep(0.01)
            other = await async_engine.add_requests([("b", [1], {"length": 3})])
            return await collect(other)
        finally:
            async_engine.shutdown()

    assert run(main()) == ["t0", "t1", "t2"]
    assert engine.aborted == ["a"]


def test_a_refused_request_raises_400_and_aborts_its_group():
    engine = ScriptedEngine()

    async def main():
        async_engine = AsyncEngine(engine, read)
        async_engine.start()
        try:
            with pytest.raises(APIError) as info:
                await async_engine.add_requests([("ok", [1], {"length": 10**6}), ("bad", [-1], {"length": 1})])
            assert info.value.status == 400 and "refused" in info.value.message
            for _ in range(200):
                if not engine.running:
                    break
                await asyncio.sleep(0.01)
            return await collect(await async_engine.add_requests([("c", [1], {"length": 2})]))
        finally:
            async_engine.shutdown()

    assert run(main()) == ["t0", "t1"]
    assert engine.aborted == ["ok"]


def test_a_failing_step_fails_the_requests_in_flight_and_the_engine_goes_on():
    engine = ScriptedEngine()

    async def main():
        async_engine = AsyncEngine(engine, read)
        async_engine.start()
        try:
            doomed = await async_engine.add_requests([("x", [-2], {"length": 5})])
            with pytest.raises(APIError) as info:
                await collect(doomed)
            assert info.value.status == 500 and "boom" in info.value.message
            return await collect(await async_engine.add_requests([("y", [1], {"length": 2})]))
        finally:
            async_engine.shutdown()

    assert run(main()) == ["t0", "t1"]


def test_metrics_count_tokens_and_latencies():
    from prometheus_client.parser import text_string_to_metric_families

    engine = ScriptedEngine()
    metrics = ServerMetrics(lambda: async_engine.stats())

    async def main():
        async_engine.start()
        try:
            return await collect(await async_engine.add_requests([("a", [1, 2, 3], {"length": 4})]))
        finally:
            async_engine.shutdown()

    async_engine = AsyncEngine(engine, read, metrics=metrics)
    run(main())
    samples = {s.name: s.value for family in text_string_to_metric_families(metrics.render().decode())
               for s in family.samples}
    assert samples["fastcot:prompt_tokens_total"] == 3
    assert samples["fastcot:generation_tokens_total"] == 4
    assert samples["fastcot:time_to_first_token_seconds_count"] == 1
    assert samples["fastcot:inter_token_latency_seconds_count"] == 3
    assert samples["fastcot:e2e_request_latency_seconds_count"] == 1
    assert samples["fastcot:num_requests_running"] == 0
    assert samples["fastcot:kv_cache_usage_perc"] == 0.5

"""`LLMEngine` driven by one background thread, each request fed through an asyncio queue.

vLLM's AsyncLLM idea without a second process: the event loop never calls the engine and never
waits on the model. Route handlers put `add`/`abort` commands on a thread-safe queue; the engine
thread drains it between steps (blocking on it while idle), runs `step()`, turns each
`RequestOutput` into an immutable `Update` and hands a whole step's updates to the loop with one
`call_soon_threadsafe`, where they go into per-request `asyncio.Queue`s.

A request is accepted (or refused with a 400, e.g. `n` samples that the cache cannot hold)
when the engine thread has added it, so a streamed response starts only for accepted requests.
A handler that stops listening (client gone, cancelled) aborts its request; the engine frees
its blocks at the next step boundary. An exception from `step()` fails the requests then in
flight with a server error and the thread goes on serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fastcot.entrypoints.errors import bad_request, server_error
from fastcot.entrypoints.metrics import ServerMetrics

log = logging.getLogger("fastcot.serve")


@dataclass(frozen=True)
class SampleDelta:
    """What one sample (`index`) of a request produced in one step."""

    index: int
    text: str  # new answer text
    reasoning: str  # new thinking text
    num_tokens: int  # new output tokens
    num_reasoning_tokens: int  # thinking tokens among them
    logprobs: tuple | None  # per new token: (token, logprob, ((token, logprob), ...)), tokens as text
    finish_reason: str | None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class Update:
    """One step's progress of one request."""

    samples: tuple[SampleDelta, ...]
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int = 0


_ACCEPTED = object()
_STOP = ("stop",)


@dataclass
class _Timing:
    arrival: float
    num_prompt_tokens: int
    first: float | None = None
    last: float | None = None


class RequestGroup:
    """The loop's end of one or more engine requests served as one HTTP request (a text
    completion may hold several prompts): `get` their updates in arrival order, `close` the
    group (aborting what is unfinished)."""

    def __init__(self, engine: AsyncEngine, request_ids: list[str]):
        self._engine = engine
        self.request_ids = list(request_ids)
        self.unfinished = set(request_ids)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.early: deque = deque()  # items that came while other requests were being added

    @property
    def finished(self) -> bool:
        return not self.unfinished

    async def get(self, timeout: float | None = None) -> tuple[str, Update] | None:
        """The next `(request_id, update)`, or None after `timeout` seconds without one.
        Raises the error (an `APIError`) of a request the engine failed."""
        if self.early:
            request_id, item = self.early.popleft()
        else:
            try:
                request_id, item = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                return None
        if isinstance(item, Exception):
            self.unfinished.discard(request_id)
            raise item
        if item.finished:
            self.unfinished.discard(request_id)
        return request_id, item

    def close(self) -> None:
        for request_id in self.request_ids:
            if request_id in self.unfinished:
                self._engine.abort(request_id)
            self._engine._groups.pop(request_id, None)
        self.unfinished.clear()


class AsyncEngine:
    """Owns `engine` from its own thread.

    `engine` must offer `add_request(request_id, prompt, params)`, `step()`,
    `abort_request(request_id)`, `has_unfinished_requests()` and `stats()`; `read_output`
    turns one of its `RequestOutput`s into an `Update` (on the engine thread)."""

    def __init__(self, engine, read_output: Callable[[object], Update], *, metrics: ServerMetrics | None = None):
        self.engine = engine
        self._read_output = read_output
        self.metrics = metrics
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._groups: dict[str, RequestGroup] = {}  # loop side only
        self._timing: dict[str, _Timing] = {}  # engine thread only
        self._stats = engine.stats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.dead: BaseException | None = None  # set if the engine thread itself died

    # --- loop side -----------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="fastcot-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._commands.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def stats(self):
        """The engine's `stats()` snapshot as of the end of its last step (any thread)."""
        return self._stats

    async def add_requests(self, requests: list[tuple[str, list[int], object]]) -> RequestGroup:
        """Hand `(request_id, prompt_token_ids, params)` requests to the engine; returns once all
        were added. If the engine refuses one, the others are aborted and its `APIError` is
        raised (400 for a ValueError/TypeError, 500 otherwise)."""
        if self.dead is not None or self._thread is None:
            raise server_error("the engine is not running")
        group = RequestGroup(self, [rid for rid, _, _ in requests])
        arrival = time.monotonic()
        for request_id, prompt, params in requests:
            if request_id in self._groups:
                raise server_error(f"request id {request_id!r} is already in use")
            self._groups[request_id] = group
            self._commands.put(("add", request_id, prompt, params, arrival))
        error, waiting = None, set(group.request_ids)
        try:
            while waiting:
                request_id, item = await group.queue.get()
                if request_id not in waiting:  # an accepted request's first output
                    group.early.append((request_id, item))
                    continue
                waiting.discard(request_id)
                if item is not _ACCEPTED:
                    group.unfinished.discard(request_id)
                    error = error or item
        except BaseException:
            group.close()
            raise
        if error is not None:
            group.close()
            raise error
        return group

    def abort(self, request_id: str) -> None:
        self._groups.pop(request_id, None)
        self._commands.put(("abort", request_id))

    def _deliver(self, items: list[tuple[str, object]]) -> None:
        for request_id, item in items:
            group = self._groups.get(request_id)
            if group is not None:
                group.queue.put_nowait((request_id, item))

    # --- engine thread -------------------------------------------------------------------------

    def _post(self, items: list[tuple[str, object]]) -> None:
        if items:
            try:
                self._loop.call_soon_threadsafe(self._deliver, items)
            except RuntimeError:  # the loop is closed: the server is gone, nobody is listening
                pass

    def _run(self) -> None:
        try:
            while True:
                idle = not self.engine.has_unfinished_requests()
                if not self._drain(block=idle):
                    break
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as exc:  # noqa: BLE001 - reported to every waiting request
            log.exception("the engine thread died")
            self.dead = exc
            self._post([(rid, server_error(f"the engine stopped: {exc}")) for rid in list(self._timing)])
            raise
        finally:
            self._abort_all()

    def _drain(self, *, block: bool) -> bool:
        """Apply the queued commands (waiting for one when `block`); False on stop."""
        replies: list[tuple[str, object]] = []
        applied = False
        try:
            command = self._commands.get() if block else self._commands.get_nowait()
            while True:
                if command is _STOP:
                    self._post(replies)
                    return False
                replies.extend(self._apply(command))
                applied = True
                command = self._commands.get_nowait()
        except queue.Empty:
            pass
        if applied:
            self._stats = self.engine.stats()
        self._post(replies)
        return True

    def _apply(self, command) -> list[tuple[str, object]]:
        if command[0] == "abort":
            request_id = command[1]
            if self._timing.pop(request_id, None) is not None:
                self.engine.abort_request(request_id)
                self._forget(request_id)
            return []
        _, request_id, prompt, params, arrival = command
        try:
            self.engine.add_request(request_id, prompt, params)
        except (ValueError, TypeError) as exc:
            return [(request_id, bad_request(str(exc)))]
        except Exception as exc:  # noqa: BLE001 - this request fails, the server goes on
            log.exception("adding request %s failed", request_id)
            return [(request_id, server_error(f"adding the request failed: {exc}"))]
        self._timing[request_id] = _Timing(arrival, len(prompt))
        if self.metrics is not None:
            self.metrics.prompt_tokens.inc(len(prompt))
        return [(request_id, _ACCEPTED)]

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - the requests in flight fail, the server goes on
            log.exception("engine step failed; failing the requests in flight")
            error = server_error(f"the engine failed while generating: {exc}")
            self._post([(rid, error) for rid in self._timing])
            self._abort_all()
            self._stats = self.engine.stats()
            return
        now = time.monotonic()
        items = []
        for output in outputs:
            timing = self._timing.get(output.request_id)
            if timing is None:
                continue  # aborted meanwhile
            try:
                update = self._read_output(output)
            except Exception as exc:  # noqa: BLE001 - one bad output fails its request only
                log.exception("reading the output of request %s failed", output.request_id)
                items.append((output.request_id, server_error(f"reading the output failed: {exc}")))
                self._timing.pop(output.request_id)
                self.engine.abort_request(output.request_id)
                self._forget(output.request_id)
                continue
            self._observe(timing, update, now)
            if update.finished:
                del self._timing[output.request_id]
            items.append((output.request_id, update))
        self._stats = self.engine.stats()
        self._post(items)

    def _observe(self, timing: _Timing, update: Update, now: float) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        new = sum(s.num_tokens for s in update.samples)
        if new:
            metrics.generation_tokens.inc(new)
            reasoning = sum(s.num_reasoning_tokens for s in update.samples)
            if reasoning:
                metrics.reasoning_tokens.inc(reasoning)
            if timing.first is None:
                timing.first = now
                metrics.time_to_first_token.observe(now - timing.arrival)
            else:
                metrics.inter_token_latency.observe(now - timing.last)
            timing.last = now
        if update.finished:
            metrics.e2e_request_latency.observe(now - timing.arrival)

    def _abort_all(self) -> None:
        for request_id in list(self._timing):
            try:
                self.engine.abort_request(request_id)
            except Exception:  # noqa: BLE001 - keep aborting the others
                log.exception("aborting request %s failed", request_id)
            self._forget(request_id)
        self._timing.clear()

    def _forget(self, request_id: str) -> None:
        """Let the output reader drop what it keeps of a request that ended unfinished."""
        forget = getattr(self._read_output, "forget", None)
        if forget is not None:
            forget(request_id)

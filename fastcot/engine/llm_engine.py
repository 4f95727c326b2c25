"""`fastcot.LLMEngine`: the step-able core (vLLM's names). Requests come in with `add_request`
at any time, each `step()` schedules and runs one batch and returns the requests that
progressed, `abort_request` ends requests. `LLM` and the server drive one of these.

Not thread-safe: one thread drives it (`step`, and `add_request`/`abort_request` between steps);
other threads hand their requests and aborts to that thread (a lock or a queue of their own).

Interruption: if `step()` raises (a bug, out of memory, KeyboardInterrupt), every request in
flight is dropped (as if aborted, without outputs), every KV block returns to the pool (the
prefix cache is cleared) and the engine is ready for new requests; `num_failed_steps` counts
these. A failure that belongs to one request (its output processing raised) ends that request
alone with `finish_reason="error"` and the message in `stop_reason`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from fastcot.engine import capacity
from fastcot.engine.block_manager import BlockManager
from fastcot.engine.engine_steps import EngineSteps
from fastcot.engine.inputs import parse_prompt
from fastcot.engine.logprobs import LogprobFormatter
from fastcot.engine.model_runner import ModelRunner
from fastcot.engine.output_processor import SequenceOutput
from fastcot.engine.request import Request
from fastcot.engine.sampling import SamplingParams, request_key
from fastcot.engine.scheduler import Scheduler
from fastcot.engine.sequence import RequestOutput, Sequence
from fastcot.engine.speculative import SpeculativeConfig, make_speculator

logger = logging.getLogger("fastcot")
KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class EngineStats:
    """A snapshot of the engine's state and counters (counters only grow), for metrics.

    Token counters: `prompt_tokens` (prompt length of each request, counted at its first
    token), `generation_tokens` (every output token emitted), `reasoning_tokens` (the thinking
    tokens of finished samples). Prefix cache, in tokens: `prefix_cache_queries` (tokens looked
    up when sequences were admitted), `prefix_cache_hits` (found cached). `finished` counts
    finished samples by finish reason."""

    num_running_requests: int
    num_waiting_requests: int
    num_running_seqs: int
    num_waiting_seqs: int
    kv_cache_usage: float  # fraction of KV blocks held by sequences (cached-but-free blocks count as free)
    num_kv_blocks: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens: int
    generation_tokens: int
    reasoning_tokens: int
    num_preemptions: int
    num_failed_steps: int
    spec_draft_tokens: int
    spec_accepted_tokens: int
    finished: dict[str, int]


class LLMEngine(EngineSteps):
    """Continuous batching over a paged KV cache, one step at a time.

    Constructor arguments are `LLM`'s (see `fastcot.LLM`); `LLMEngine.from_args(model,
    **engine_args)` is the same. `from_model` wraps an already built model.

    Example::

        engine = fastcot.LLMEngine("tiny-random")
        engine.add_request("a", "Hello", fastcot.SamplingParams(temperature=0, max_tokens=8))
        while engine.has_unfinished_requests():
            for out in engine.step():
                print(out.request_id, repr(out.outputs[0].delta_text), out.finished)
    """

    def __init__(self, model: str, *, tokenizer=None, quantization=None, dtype="auto", kv_cache_dtype="auto",
                 device=None, max_model_len=None, max_num_seqs=256, block_size=16, gpu_memory_utilization=0.9,
                 num_kv_blocks=None, enforce_eager=False, seed=0, max_num_batched_tokens=8192,
                 enable_prefix_caching=True, max_logprobs=20, generation_config="auto", thinking_delimiters=None,
                 speculative_config=None, gc_freeze=True, tensor_parallel_size=1):
        from fastcot.models import load_config, load_model, load_tokenizer, resolve_device

        if kv_cache_dtype not in KV_CACHE_DTYPES:  # fail before loading the weights
            raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        defaults = capacity.generation_defaults(model, generation_config)
        config = load_config(model)
        device = resolve_device(device)
        start = time.perf_counter()
        if tensor_parallel_size != 1:
            from fastcot.distributed import load_parallel_model

            loaded = load_parallel_model(model, tensor_parallel_size, dtype=dtype, device=device,
                                         quantization=quantization)
            from fastcot.distributed import graphs

            enforce_eager = enforce_eager or not graphs.enabled()  # tensor-parallel graphs are opt-in
        else:
            loaded = load_model(model, dtype=dtype, device=device, quantization=quantization, seed=seed)
        method = quantization or (config.quantization_config or {}).get("quant_method") or "none"
        logger.info("loaded %s in %.1f s: %.3f GiB of weights, dtype %s, quantization %s, on %s", model,
                    time.perf_counter() - start, capacity.model_bytes(loaded) / capacity.GiB,
                    str(loaded.lm_head_weight.dtype).removeprefix("torch."), method, device)
        try:
            self._setup(loaded, load_tokenizer(tokenizer if tokenizer is not None else model), config=config,
                        device=device, kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len,
                        max_num_seqs=max_num_seqs, block_size=block_size,
                        gpu_memory_utilization=gpu_memory_utilization, num_kv_blocks=num_kv_blocks,
                        enforce_eager=enforce_eager, seed=seed, max_num_batched_tokens=max_num_batched_tokens,
                        enable_prefix_caching=enable_prefix_caching, max_logprobs=max_logprobs,
                        generation_defaults=defaults, thinking_delimiters=thinking_delimiters,
                        speculative_config=speculative_config, gc_freeze=gc_freeze)
        except BaseException:
            self.model = loaded
            self.shutdown()  # tensor-parallel ranks already started
            raise

    @classmethod
    def from_args(cls, model: str, **engine_args) -> LLMEngine:
        return cls(model, **engine_args)

    @classmethod
    def from_model(cls, model, tokenizer, *, device, kv_cache_dtype="auto", max_model_len=None, max_num_seqs=256,
                   block_size=16, gpu_memory_utilization=0.9, num_kv_blocks=None, enforce_eager=False, seed=0,
                   max_num_batched_tokens=8192, enable_prefix_caching=True, max_logprobs=20,
                   thinking_delimiters=None, speculative_config=None, gc_freeze=True) -> LLMEngine:
        """An engine around an already built model (anything with `config`, `lm_head_weight`,
        `__call__(input_ids, positions, kv_caches, metadata)` and `compute_logits`), e.g. a
        stub for measuring host overhead."""
        engine = cls.__new__(cls)
        engine._setup(model, tokenizer, config=model.config, device=torch.device(device), kv_cache_dtype=kv_cache_dtype,
                      max_model_len=max_model_len, max_num_seqs=max_num_seqs, block_size=block_size,
                      gpu_memory_utilization=gpu_memory_utilization, num_kv_blocks=num_kv_blocks,
                      enforce_eager=enforce_eager, seed=seed, max_num_batched_tokens=max_num_batched_tokens,
                      enable_prefix_caching=enable_prefix_caching, max_logprobs=max_logprobs,
                      generation_defaults={}, thinking_delimiters=thinking_delimiters,
                      speculative_config=speculative_config, gc_freeze=gc_freeze)
        return engine

    def _setup(self, model, tokenizer, *, config, device, kv_cache_dtype, max_model_len, max_num_seqs, block_size,
               gpu_memory_utilization, num_kv_blocks, enforce_eager, seed, max_num_batched_tokens,
               enable_prefix_caching, max_logprobs, generation_defaults, thinking_delimiters, speculative_config,
               gc_freeze):
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        for name, value, low in (("max_num_seqs", max_num_seqs, 1), ("block_size", block_size, 1),
                                 ("max_num_batched_tokens", max_num_batched_tokens, 1),
                                 ("max_logprobs", max_logprobs, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(enable_prefix_caching, bool):
            raise ValueError(f"enable_prefix_caching must be a bool, got {enable_prefix_caching!r}")
        limit = config.max_position_embeddings
        if config.sliding_window:
            limit = min(limit, config.sliding_window)  # attention here never slides
        if max_model_len is None:
            max_model_len = limit
        elif isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or not 1 <= max_model_len <= limit:
            raise ValueError(f"max_model_len must be an int in [1, {limit}] for this model, got {max_model_len!r}")
        self.device = device
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_model_len = max_model_len
        self.max_logprobs = max_logprobs
        self.enforce_eager = enforce_eager
        self.default_sampling = generation_defaults
        SamplingParams(**generation_defaults)  # a bad generation_config.json fails here, naming the field
        self.thinking = capacity.thinking_delimiters(tokenizer, thinking_delimiters)
        spec = SpeculativeConfig.from_user(speculative_config)
        self.speculator = None if spec is None else make_speculator(spec)
        kv_dtype = KV_CACHE_DTYPES[kv_cache_dtype] or model.lm_head_weight.dtype
        num_kv_blocks = capacity.num_kv_blocks(  # model.config: a tensor-parallel rank's shard
            model.config, device=device, block_size=block_size, kv_dtype=kv_dtype, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization, num_blocks=num_kv_blocks)
        self.block_manager = BlockManager(num_kv_blocks, block_size, enable_prefix_caching=enable_prefix_caching)
        self.runner = ModelRunner(model, block_manager=self.block_manager, kv_cache_dtype=kv_dtype, device=device,
                                  max_blocks_per_seq=-(-max_model_len // block_size), max_num_seqs=max_num_seqs,
                                  enforce_eager=enforce_eager,
                                  speculative_tokens=0 if spec is None else spec.num_speculative_tokens,
                                  speculative_batch=0 if spec is None else spec.max_batch_size)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens)
        self.requests: dict[str, Request] = {}  # unfinished, by id
        self._outs: dict[int, SequenceOutput] = {}  # seq_id -> output state
        self._rng = random.Random(seed)
        self.logprob_entry = LogprobFormatter(tokenizer)
        self.num_prompt_tokens = self.num_generation_tokens = self.num_reasoning_tokens = 0
        self.num_failed_steps = 0
        self.finish_reasons: Counter[str] = Counter()
        if gc_freeze:
            # The model, tokenizer and imported modules live as long as the process: keep them
            # out of the garbage collector's collections, which would otherwise walk millions
            # of objects in the middle of decode steps (vLLM and SGLang do the same).
            gc.collect()
            gc.freeze()

    def shutdown(self) -> None:
        """Release what outlives the engine object: with tensor parallelism, stop every other
        rank. Idempotent; a step after it raises."""
        stop = getattr(getattr(self, "model", None), "shutdown", None)
        if stop is not None:
            stop()

    # ---- requests ----------------------------------------------------------------------------

    def get_tokenizer(self):
        return self.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """The parameters of a request given none: the library's defaults, overridden by the
        checkpoint's generation_config.json under `generation_config="auto"`."""
        return SamplingParams(**self.default_sampling)

    def add_request(self, request_id: str, prompt, params: SamplingParams | None = None, *,
                    arrival_time: float | None = None) -> None:
        """Queue a request; it runs from the next `step()` on.

        `prompt`: a str, a list of token ids, or a vLLM prompt dict (`{"prompt": str}`,
        `{"prompt_token_ids": [...]}`). `params`: None for `get_default_sampling_params()`;
        the engine keeps its own copy (validated again). Raises ValueError / TypeError (nothing
        is queued) for a bad id, prompt or parameter."""
        self._register(self.make_request(request_id, prompt, params, arrival_time=arrival_time))

    def make_request(self, request_id: str, prompt, params: SamplingParams | None = None, *,
                     arrival_time: float | None = None) -> Request:
        """Validate and build a request without queueing it (`LLM` checks a whole batch first)."""
        if not isinstance(request_id, str):
            raise TypeError(f"request_id must be a str, got {type(request_id).__name__}")
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already in use by an unfinished request")
        params = self._check_params(params)
        text, ids = parse_prompt(prompt, self.tokenizer)
        if not ids:
            raise ValueError("a prompt must not be empty")
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must lie in [0, {vocab}), got {min(ids)}..{max(ids)}")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} (the prompt and "
                             "at least one output token must fit)")
        bm = self.block_manager
        needed = len(ids) // bm.block_size + params.n  # the shared full blocks, and a last block each
        if params.n > 1 and needed > bm.num_blocks:
            raise ValueError(f"SamplingParams.n={params.n} samples of a {len(ids)}-token prompt need {needed} KV "
                             f"blocks at once (shared prompt blocks plus one each), but the cache has {bm.num_blocks}")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seqs = [Sequence(request_id, i, ids, params, request_key(seed, i)) for i in range(params.n)]
        streaming = params.output_kind != "final_only"
        outs = [SequenceOutput(s, self.tokenizer, self.config.eos_token_ids, self.max_model_len, self.thinking,
                               streaming=streaming) for s in seqs]
        arrival = time.perf_counter() if arrival_time is None else arrival_time
        return Request(request_id, text, ids, params, seqs, outs, arrival)

    def _check_params(self, params) -> SamplingParams:
        if params is None:
            return self.get_default_sampling_params()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be SamplingParams or None, got {type(params).__name__}")
        params = dataclasses.replace(params)  # our own copy, validated again (fields may have been set since)
        if self.thinking is None and (params.thinking_budget is not None or params.min_thinking_tokens
                                      or params.reasoning_effort is not None):
            field = "thinking_budget" if params.thinking_budget is not None else \
                "reasoning_effort" if params.reasoning_effort is not None else "min_thinking_tokens"
            raise ValueError(f"SamplingParams.{field} needs a reasoning model, but this model's tokenizer has no known "
                             "thinking delimiters; give them as LLM(..., thinking_delimiters=(start, end))")
        bound = min(self.max_logprobs, self.config.vocab_size)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(params, name)
            if value is not None and value > bound:
                raise ValueError(f"SamplingParams.{name}={value} exceeds this engine's bound of {bound} "
                                 f"(max_logprobs={self.max_logprobs}, vocabulary {self.config.vocab_size}); "
                                 "LLM(max_logprobs=...) raises it")
        return params

    def _register(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request_id {request.request_id!r} is already in use by an unfinished request")
        for seq, out in zip(request.seqs, request.outs):
            self._outs[seq.seq_id] = out
        self.requests[request.request_id] = request
        self.scheduler.add(request.seqs[0])  # the other samples fork from it once its prompt is in

    def abort_request(self, request_id: str | Iterable[str]) -> list[RequestOutput]:
        """End requests now (unknown or finished ids are ignored): their unfinished samples
        finish with `finish_reason="abort"`, their blocks return to the pool. Returns each
        aborted request's final output (vLLM returns nothing; `step()` will not report them)."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        outputs = []
        for rid in ids:
            request = self.requests.get(rid)
            if request is not None:
                self._end(request, "abort")
                outputs.append(self._output(request))
        return outputs

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def get_num_unfinished_requests(self) -> int:
        return len(self.requests)

    # ---- steps -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule and run one batch (a prefill chunk or a decode step). Returns one
        `RequestOutput` per request that progressed (new tokens, or finished): every request
        whose `output_kind` is "cumulative" or "delta", and "final_only" requests when they
        finish. Each output's samples carry their deltas since the previous output; a request
        is reported `finished` once, then forgotten."""
        try:
            return self._step()
        except BaseException:
            self._drop_all()
            raise

    # ---- statistics, checks --------------------------------------------------------------------

    def stats(self) -> EngineStats:
        """Counts and counters for metrics; O(running + waiting sequences)."""
        scheduler, bm = self.scheduler, self.block_manager
        running = {s.request_id for s in scheduler.running}
        spec = self.speculator
        return EngineStats(
            num_running_requests=len(running), num_waiting_requests=len(self.requests) - len(running),
            num_running_seqs=len(scheduler.running), num_waiting_seqs=len(scheduler.waiting),
            kv_cache_usage=1.0 - bm.num_free_blocks / bm.num_blocks, num_kv_blocks=bm.num_blocks,
            prefix_cache_queries=bm.num_queried_tokens, prefix_cache_hits=bm.num_hit_tokens,
            prompt_tokens=self.num_prompt_tokens, generation_tokens=self.num_generation_tokens,
            reasoning_tokens=self.num_reasoning_tokens, num_preemptions=scheduler.num_preemptions,
            num_failed_steps=self.num_failed_steps,
            spec_draft_tokens=0 if spec is None else spec.num_proposed,
            spec_accepted_tokens=0 if spec is None else spec.num_accepted,
            finished=dict(self.finish_reasons),
        )

    def check_invariants(self) -> None:
        """Assert the engine's accounting (for tests; O(blocks + table entries)): reference
        counts equal the live block tables, no block both held and free, and each live
        sequence's device block table row (after the changes pending for the next step)
        equals its block table."""
        live = [s for s in (*self.scheduler.running, *self.scheduler.waiting) if s.block_table]
        self.block_manager.check_consistency(live)
        pending = {seq_id: start for seq_id, (_, start) in self.block_manager._changed.items()}
        runner = self.runner
        for seq in live:
            slot = runner.rows.get(seq.seq_id)
            if slot is None:
                continue
            upto = min(len(seq.block_table), pending.get(seq.seq_id, len(seq.block_table)))
            row = runner.tables[slot, :upto].tolist()
            assert row == seq.block_table[:upto], f"sequence {seq.seq_id}: device row {row} != {seq.block_table}"
        for seq_id in runner.rows:
            assert seq_id in {s.seq_id for s in self.scheduler.running} or seq_id in pending, \
                f"slot held by sequence {seq_id}, which is not running"

"""`fastcot.LLM`: the vLLM-shaped entry point (load a model, generate, chat)."""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Iterator
from typing import NamedTuple

import torch

from fastcot.engine.block_manager import BlockManager
from fastcot.engine.detokenizer import IncrementalDetokenizer
from fastcot.engine.model_runner import ModelRunner
from fastcot.engine.output_processor import SequenceOutput
from fastcot.engine.sampling import SamplingParams, request_key
from fastcot.engine.scheduler import Batch, Scheduler
from fastcot.engine.sequence import (
    CompletionOutput,
    RequestMetrics,
    RequestOutput,
    Sequence,
    Status,
)
from fastcot.engine.speculative import NgramSpeculator, SpeculativeConfig
from fastcot.reasoning import (
    COT_SYSTEM_PROMPT,
    find_thinking_delimiters,
    split_cot_answer,
)

KV_CACHE_DTYPES = {"auto": None, "fp8": torch.float8_e4m3fn, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LLM:
    """Load a Llama-family model and generate with continuous batching over a paged KV cache.

    Args:
        model: a local Hugging Face directory (config.json, *.safetensors, tokenizer) or a
            built-in preset with random weights (`tiny-random`, `llama-3.1-8b-random`, ...).
        quantization: None (as the checkpoint is, GPTQ/AWQ included) or "int4" (quantize on load).
        dtype: "auto", "float16", "bfloat16" or "float32".
        kv_cache_dtype: "auto" (the model's dtype) or "fp8" (float8 e4m3, scale 1).
        device: defaults to CUDA when available.
        max_model_len: longest prompt + output; defaults to the model's limit.
        max_num_seqs: most sequences running at once.
        block_size: tokens per KV-cache block.
        num_kv_blocks: KV-cache size in blocks; by default 90% of free GPU memory, or on CPU
            enough for 8 sequences of max_model_len (at most 4096 blocks).
        enforce_eager: run decode steps eagerly instead of replaying CUDA graphs (GPU only;
            graphs are captured for padded batch sizes up to max_num_seqs at the first decode).
        seed: seeds the noise of unseeded sampling and random preset weights.
        thinking_delimiters: a reasoning model's thinking delimiters: None detects them from
            the tokenizer (`<think>`/`</think>` and the like, see
            `fastcot.reasoning.find_thinking_delimiters`), a `(start, end)` pair of strings sets
            them, False means none. Each must be a single token. With delimiters, outputs carry
            `reasoning_text` apart from the answer `text`, and thinking budgets apply.
        speculative_config: None, or `{"method": "ngram", "num_speculative_tokens": k, ...}`
            for n-gram speculative decoding of small decode batches (see
            `fastcot.engine.speculative`); greedy and seeded outputs are unchanged by it.
        gc_freeze: after setup, `gc.collect()` then `gc.freeze()`: every object alive then (the
            model, the tokenizer, imported modules, and the caller's) moves to the collector's
            permanent generation, where refcounting still frees it but cycle collection no
            longer walks it. Pass False where cyclic garbage alive at that moment must stay
            collectable.

    Example::

        llm = fastcot.LLM("tiny-random")
        out = llm.generate(["Hello"], fastcot.SamplingParams(temperature=0, max_tokens=8))
        print(out[0].outputs[0].text)
    """

    def __init__(self, model: str, *, quantization=None, dtype="auto", kv_cache_dtype="auto", device=None,
                 max_model_len=None, max_num_seqs=256, block_size=16, num_kv_blocks=None, enforce_eager=False,
                 seed=0, max_num_batched_tokens=8192, thinking_delimiters=None, speculative_config=None,
                 gc_freeze=True):
        from fastcot.models import (
            load_config,
            load_model,
            load_tokenizer,
            resolve_device,
        )

        if kv_cache_dtype not in KV_CACHE_DTYPES:  # fail before loading the weights
            raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        config = load_config(model)
        device = resolve_device(device)
        self._setup(
            load_model(model, dtype=dtype, device=device, quantization=quantization, seed=seed), load_tokenizer(model),
            config=config, device=device, kv_cache_dtype=kv_cache_dtype, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, block_size=block_size, num_kv_blocks=num_kv_blocks,
            enforce_eager=enforce_eager, seed=seed, max_num_batched_tokens=max_num_batched_tokens,
            thinking_delimiters=thinking_delimiters, speculative_config=speculative_config, gc_freeze=gc_freeze,
        )

    @classmethod
    def from_model(cls, model, tokenizer, *, device, kv_cache_dtype="auto", max_model_len=None, max_num_seqs=256,
                   block_size=16, num_kv_blocks=None, enforce_eager=False, seed=0, max_num_batched_tokens=8192,
                   thinking_delimiters=None, speculative_config=None, gc_freeze=True):
        """An engine around an already built model (anything with `config`, `lm_head_weight`,
        `__call__(input_ids, positions, kv_caches, metadata)` and `compute_logits`), e.g. a
        stub for measuring host overhead."""
        llm = cls.__new__(cls)
        llm._setup(model, tokenizer, config=model.config, device=torch.device(device), kv_cache_dtype=kv_cache_dtype,
                   max_model_len=max_model_len, max_num_seqs=max_num_seqs, block_size=block_size,
                   num_kv_blocks=num_kv_blocks, enforce_eager=enforce_eager, seed=seed,
                   max_num_batched_tokens=max_num_batched_tokens, thinking_delimiters=thinking_delimiters,
                   speculative_config=speculative_config, gc_freeze=gc_freeze)
        return llm

    def _setup(self, model, tokenizer, *, config, device, kv_cache_dtype, max_model_len, max_num_seqs, block_size,
               num_kv_blocks, enforce_eager, seed, max_num_batched_tokens, thinking_delimiters=None,
               speculative_config=None, gc_freeze=True):
        if kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {kv_cache_dtype!r}")
        for name, value in (("max_num_seqs", max_num_seqs), ("block_size", block_size),
                            ("max_num_batched_tokens", max_num_batched_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        limit = config.max_position_embeddings
        if config.sliding_window:
            limit = min(limit, config.sliding_window)  # attention here never slides
        if max_model_len is None:
            max_model_len = limit
        elif not isinstance(max_model_len, int) or not 1 <= max_model_len <= limit:
            raise ValueError(f"max_model_len must be an int in [1, {limit}] for this model, got {max_model_len!r}")
        self.device = device
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.max_model_len = max_model_len
        self.enforce_eager = enforce_eager
        kv_dtype = KV_CACHE_DTYPES[kv_cache_dtype] or self.model.lm_head_weight.dtype
        if num_kv_blocks is None:
            num_kv_blocks = self._default_num_blocks(block_size, kv_dtype)
        self.block_manager = BlockManager(num_kv_blocks, block_size)
        self.runner = ModelRunner(self.model, block_manager=self.block_manager,
                                  kv_cache_dtype=kv_dtype, device=self.device,
                                  max_blocks_per_seq=-(-max_model_len // block_size),
                                  max_num_seqs=max_num_seqs, enforce_eager=enforce_eager)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_num_batched_tokens)
        self._rng = random.Random(seed)
        self._request_counter = 0
        self._aborted: set[str] = set()
        self.thinking = _thinking_delimiters(tokenizer, thinking_delimiters)
        spec = SpeculativeConfig.from_user(speculative_config)
        self.speculator = None if spec is None else NgramSpeculator(spec)
        if gc_freeze:
            # The model, tokenizer and imported modules live as long as the process: keep them
            # out of the garbage collector's collections, which would otherwise walk millions
            # of objects in the middle of decode steps (vLLM and SGLang do the same).
            gc.collect()
            gc.freeze()

    def _default_num_blocks(self, block_size: int, kv_dtype: torch.dtype) -> int:
        per_block = self.config.kv_cache_bytes_per_block(block_size, kv_dtype)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(1, int(free * 0.9) // per_block)
        return min(4096, 8 * -(-self.max_model_len // block_size))

    # --- requests ------------------------------------------------------------------------------

    def _prompt_ids(self, prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("a prompt must not be empty")
            ids = self.tokenizer.encode(prompt)
            text = prompt
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids, text = list(prompt), None
        else:
            raise TypeError(f"a prompt must be a str or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("a prompt must not be empty")
        vocab = self.config.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must lie in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}")
        return text, ids

    def _add_request(self, prompt, params: SamplingParams) -> tuple[str, str | None, list[int], list[Sequence]]:
        if self.thinking is None and (params.thinking_budget is not None or params.min_thinking_tokens):
            field = "thinking_budget" if params.thinking_budget is not None else "min_thinking_tokens"
            raise ValueError(f"SamplingParams.{field} needs a reasoning model, but this model's tokenizer has no known "
                             "thinking delimiters; give them as LLM(..., thinking_delimiters=(start, end))")
        text, ids = self._prompt_ids(prompt)
        bm = self.block_manager
        needed = len(ids) // bm.block_size + params.n  # the shared full blocks, and a last block each
        if params.n > 1 and needed > bm.num_blocks:
            raise ValueError(f"SamplingParams.n={params.n} samples of a {len(ids)}-token prompt need {needed} KV "
                             f"blocks at once (shared prompt blocks plus one each), but the cache has {bm.num_blocks}")
        request_id = str(self._request_counter)
        self._request_counter += 1
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seqs = [Sequence(request_id, i, ids, params, request_key(seed, i)) for i in range(params.n)]
        return request_id, text, ids, seqs

    # --- generation ----------------------------------------------------------------------------

    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for each prompt (a string, a list of token ids, or a list of either).

        `sampling_params` is one `SamplingParams` for all prompts or one per prompt.
        Returns one `RequestOutput` per prompt, in order.
        """
        outputs = {}
        for out in self._run(prompts, sampling_params, use_tqdm=use_tqdm, stream=False):
            outputs[out.request_id] = out
        return list(outputs.values())

    def generate_stream(self, prompts, sampling_params=None) -> Iterator[StreamDelta]:
        """Yield `StreamDelta(request_id, index, text, kind, finish_reason)` as tokens are
        generated: `kind` is "reasoning" or "answer"; each sample's last delta has its
        `finish_reason` (and may have empty text)."""
        yield from self._run(prompts, sampling_params, use_tqdm=False, stream=True)

    def _normalize(self, prompts, sampling_params):
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        for p in params:
            if not isinstance(p, SamplingParams):
                raise TypeError(f"sampling_params must be SamplingParams, got {type(p).__name__}")
        return prompts, params

    def _run(self, prompts, sampling_params, *, use_tqdm: bool, stream: bool):
        prompts, params = self._normalize(prompts, sampling_params)
        requests = [self._add_request(p, sp) for p, sp in zip(prompts, params)]  # validate all first
        stops = {}
        for request_id, _, _, seqs in requests:
            # The first sample is prefilled; the others fork from it afterwards and share its blocks.
            self.scheduler.add(seqs[0])
            for seq in seqs:
                stops[seq.seq_id] = _Stopper(seq, self.tokenizer, self.config.eos_token_ids, self.max_model_len,
                                             self.thinking, streaming=stream)
        pending_forks = {rid: seqs[1:] for rid, _, _, seqs in requests if len(seqs) > 1}
        samples = {rid: seqs for rid, _, _, seqs in requests}
        bar = _progress(len(requests), use_tqdm)

        def done(seq: Sequence):
            rid = seq.request_id
            if bar is not None and rid not in pending_forks and all(s.status == Status.FINISHED for s in samples[rid]):
                bar.update(1)

        self._aborted = set()
        while self.scheduler.has_unfinished():
            if self._aborted:
                yield from self._abort_now(samples, pending_forks, stops, stream, done)
                continue
            batch, failed = self.scheduler.schedule()
            for seq in failed:
                for other in [seq, *pending_forks.pop(seq.request_id, [])]:
                    other.finish("error", seq.stop_reason)
                    if stream:
                        yield StreamDelta(other.request_id, other.index, "", "answer", "error")
                self.runner.release(seq)
                done(seq)
            if batch is None:
                continue
            if batch.is_prefill:
                rows, row_index = self._prefill_rows(batch, pending_forks)
                token_ids = self.runner.step(batch, rows, row_index)
                self._after_prefill(batch, pending_forks)
            else:
                drafts = self._drafts(batch, stops) if self.speculator is not None else None
                if drafts is not None:
                    yield from self._speculative_step(batch, drafts, stops, stream, done)
                    continue
                rows = batch.seqs
                token_ids = self.runner.step(batch, rows, None)
            if batch.is_prefill:
                now = time.perf_counter()
                for seq in rows:
                    seq.first_token_time = seq.first_token_time or now
            else:
                for seq in rows:
                    seq.num_computed += 1  # the token it fed in is now in the cache
            if self.runner.last_logprobs is not None:
                for seq, entry in zip(rows, self.runner.last_logprobs):
                    if entry is not None:
                        seq.logprobs.append(entry)
            finished = Status.FINISHED
            replaced = []
            for i, (seq, token) in enumerate(zip(rows, token_ids)):
                stopper = stops[seq.seq_id]
                if stopper.controls and (chosen := stopper.choose(token)) != token:
                    token = chosen
                    replaced.append((i, token))
                seq.token_ids.append(token)
                stopper.observe(token)
                if stream:
                    yield from _stream_deltas(stopper)
                if seq.status is finished:
                    self._finished(seq, done)
                    if stream:
                        yield StreamDelta(seq.request_id, seq.index, "", stopper.kind, seq.finish_reason)
            if replaced:
                self.runner.replace_sampled(rows, replaced)
        if bar is not None:
            bar.close()
        if not stream:
            for request_id, text, ids, seqs in requests:
                yield _request_output(request_id, text, ids, seqs)

    def abort(self, request_id: str) -> None:
        """Stop a request that `generate_stream` is generating (from the loop consuming the
        stream): its unfinished samples end with `finish_reason="abort"` before the next step."""
        self._aborted.add(request_id)

    def _abort_now(self, samples, pending_forks, stops, stream, done):
        for request_id in self._aborted:
            seqs = samples.get(request_id, [])
            pending = pending_forks.pop(request_id, [])
            for seq in seqs:
                if seq.status == Status.FINISHED:
                    continue
                if seq not in pending:
                    self.scheduler.abort(seq)
                    self.runner.release(seq)
                stops[seq.seq_id].finish("abort")  # the text so far
                if self.speculator is not None:
                    self.speculator.forget(seq)
                done(seq)
                if stream:
                    yield from _stream_deltas(stops[seq.seq_id])
                    yield StreamDelta(seq.request_id, seq.index, "", "answer", "abort")
        self._aborted.clear()

    def _finished(self, seq: Sequence, done) -> None:
        self.scheduler.finish(seq)
        self.runner.release(seq)
        if self.speculator is not None:
            self.speculator.forget(seq)
        done(seq)

    def _drafts(self, batch, stops) -> list[list[int]] | None:
        """Draft tokens per sequence of a decode batch, or None to decode it plainly (a large
        batch, a row whose sampling depends on each token, or nothing to propose)."""
        seqs = batch.seqs
        if len(seqs) > self.speculator.config.max_batch_size:
            return None
        if any(s.params.repetition_penalty != 1.0 or s.params.logprobs is not None for s in seqs):
            return None
        drafts = []
        for seq in seqs:
            stopper = stops[seq.seq_id]
            # Room for drafts before the length limit, past the token this step samples anyway.
            limit = 0 if stopper.controls else stopper.end - len(seq.token_ids) - 1
            drafts.append(self.speculator.propose(seq, limit))
        return drafts if any(drafts) else None

    def _speculative_step(self, batch, drafts, stops, stream, done):
        """Score every sequence's drafts in one forward pass and emit the accepted tokens."""
        blocks = self.block_manager
        copies = list(batch.block_copies)
        for seq, draft in zip(batch.seqs, drafts):
            if not draft:
                continue
            seq.token_ids.extend(draft)
            if blocks.can_append(seq, len(draft)):
                copies += blocks.append_slots(seq, len(draft))
            else:  # no room for the drafts: this sequence decodes one token
                del seq.token_ids[-len(draft):]
                draft.clear()
        verify = Batch(batch.seqs, is_prefill=True, chunk_ends=[len(s) for s in batch.seqs], block_copies=copies,
                       preempted=batch.preempted)
        sampled = self.runner.verify(verify)
        self.speculator.num_steps += 1
        for seq, draft, samples in zip(batch.seqs, drafts, sampled):
            if draft:
                del seq.token_ids[-len(draft):]
            tokens = self.speculator.accept(draft, samples)
            stopper = stops[seq.seq_id]
            for token in tokens:
                if stopper.controls:
                    token = stopper.choose(token)  # only rows without drafts have controls
                seq.num_computed += 1
                seq.token_ids.append(token)
                stopper.observe(token)
                if stream:
                    yield from _stream_deltas(stopper)
                if seq.status == Status.FINISHED:
                    self._finished(seq, done)
                    if stream:
                        yield StreamDelta(seq.request_id, seq.index, "", stopper.kind, seq.finish_reason)
                    break
            else:
                blocks.truncate(seq)  # the blocks taken for rejected drafts

    @staticmethod
    def _prefill_rows(batch, pending_forks) -> tuple[list[Sequence], list[int]]:
        """The sequences a prefill step samples for (those whose prompt it completes, and the
        other samples of their requests) and the batch row whose logits each one uses."""
        rows, row_index = [], []
        for i, (seq, end) in enumerate(zip(batch.seqs, batch.chunk_ends)):
            if end < len(seq):
                continue  # a prefill chunk short of the sequence's end: nothing to sample yet
            rows.append(seq)
            row_index.append(i)
            if seq.request_id in pending_forks and seq.num_output == 0:
                rows.extend(pending_forks[seq.request_id])
                row_index.extend([i] * len(pending_forks[seq.request_id]))
        return rows, row_index

    def _after_prefill(self, batch, pending_forks) -> None:
        """Mark the prefilled tokens computed and cached; fork the other samples of requests
        whose prompt is complete (they share its blocks)."""
        for seq, end in zip(batch.seqs, batch.chunk_ends):
            seq.num_computed = end
            self.block_manager.cache_computed(seq, end)
            if end == len(seq) and seq.num_output == 0:
                for child in pending_forks.pop(seq.request_id, []):
                    child.token_ids = seq.token_ids[:]
                    self.block_manager.fork(seq, child)
                    child.num_computed = len(child)
                    child.status = Status.RUNNING
                    self.scheduler.running.append(child)

    def chat(self, messages, sampling_params=None, *, use_tqdm: bool = True, reasoning: str | None = None
             ) -> list[RequestOutput]:
        """Apply the model's chat template to `messages` (a list of `{"role", "content"}` dicts, or
        a list of such conversations), then generate.

        `reasoning="cot"` (for models that do not think on their own): a built-in
        chain-of-thought system prompt (`fastcot.reasoning.COT_SYSTEM_PROMPT`: step by step,
        self-checking, a last line "Final answer: ...") is put before each conversation, and
        each output's `text` is the final answer, with the reasoning before it in
        `reasoning_text` (`text` stays whole when no final-answer line was written)."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.chat_prompt(conv, reasoning=reasoning) for conv in conversations]
        outputs = self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
        if reasoning == "cot":
            for out in outputs:
                for completion in out.outputs:
                    thought, answer = split_cot_answer(completion.text)
                    if answer:
                        completion.reasoning_text, completion.text = thought, answer
        return outputs

    def chat_prompt(self, conversation: list[dict], *, reasoning: str | None = None) -> list[int]:
        """The token ids of one conversation under the chat template (see `chat`)."""
        if reasoning not in (None, "cot"):
            raise ValueError(f"reasoning must be None or 'cot', got {reasoning!r}")
        if reasoning == "cot":
            if self.thinking is not None:
                raise ValueError("reasoning='cot' is for models that do not think on their own; this model has "
                                 f"thinking delimiters {self.thinking.start!r}/{self.thinking.end!r}")
            conversation = _with_system_prompt(conversation, COT_SYSTEM_PROMPT)
        ids = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"]) if isinstance(ids, dict) or hasattr(ids, "keys") else list(ids)


def _with_system_prompt(conversation: list[dict], prompt: str) -> list[dict]:
    """`prompt` as the system message (before an existing system message's content)."""
    if conversation and conversation[0].get("role") == "system":
        first = dict(conversation[0], content=f"{prompt}\n\n{conversation[0]['content']}")
        return [first, *conversation[1:]]
    return [{"role": "system", "content": prompt}, *conversation]


class StreamDelta(NamedTuple):
    """New text of one sample (`index`) of a request, from `LLM.generate_stream`."""

    request_id: str
    index: int
    text: str
    kind: str = "answer"  # "reasoning" (inside a thinking section) or "answer"
    finish_reason: str | None = None  # set on the sample's last delta


def _thinking_delimiters(tokenizer, spec):
    """The engine's thinking delimiters from `LLM(thinking_delimiters=...)` (see there)."""
    if spec is False:
        return None
    if spec is None:
        found = find_thinking_delimiters(tokenizer) if hasattr(tokenizer, "get_vocab") else None
        if found is not None and (len(found.start_ids) != 1 or len(found.end_ids) != 1):
            return None  # only single-token delimiters are tracked
        return found
    if not (isinstance(spec, (tuple, list)) and len(spec) == 2 and all(isinstance(x, str) for x in spec)):
        raise ValueError(f"thinking_delimiters must be None, False or a (start, end) pair of strings, got {spec!r}")
    found = find_thinking_delimiters(tokenizer, *spec)
    for name, ids in (("start", found.start_ids), ("end", found.end_ids)):
        if len(ids) != 1:
            raise ValueError(f"thinking_delimiters {name} {getattr(found, name)!r} is {len(ids)} tokens in this "
                             f"tokenizer ({ids}); each delimiter must be a single token")
    return found


_Stopper = SequenceOutput


def _stream_deltas(stopper: SequenceOutput):
    """The stream deltas of a sequence's new text (none while a stop string may remove it)."""
    reasoning, answer = stopper.take_delta()
    seq = stopper.seq
    if reasoning:
        yield StreamDelta(seq.request_id, seq.index, reasoning, "reasoning")
    if answer:
        yield StreamDelta(seq.request_id, seq.index, answer, "answer")


def _request_output(request_id, text, ids, seqs) -> RequestOutput:
    first = min((s.first_token_time for s in seqs if s.first_token_time), default=None)
    last = max((s.finish_time for s in seqs if s.finish_time), default=None)
    arrival = seqs[0].arrival_time
    decoded = sum(max(0, s.num_output - 1) for s in seqs)
    rate = decoded / (last - first) if first and last and last > first else None
    metrics = RequestMetrics(arrival, first, last, None if first is None else first - arrival, rate)
    outputs = [CompletionOutput(s.index, s.text, s.output_token_ids, s.finish_reason, s.stop_reason, s.logprobs,
                                s.reasoning_text, s.num_reasoning_tokens, s.num_delimiter_tokens) for s in seqs]
    return RequestOutput(request_id, text, list(ids), outputs, metrics)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="generating", unit="req")

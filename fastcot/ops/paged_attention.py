"""`fastcot.ops.paged_decode_attention` and `fastcot.ops.paged_prefill_attention` over a paged KV cache."""

from __future__ import annotations

import itertools
import math

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_buffer, dense_input, unit_stride_rows
from fastcot.ops._int4_configs import num_sms
from fastcot.ops._paged_checks import (
    FLOAT_DTYPES,
    check_block_tables,
    check_cache_pair,
    check_heads,
    check_query_dtype,
    check_scales,
    check_tensor,
    index_checks_enabled,
)

LOG2E = 1.4426950408889634
MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 256


def paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, *, scale=None, k_scale=1.0, v_scale=1.0, out=None):
    """Attention of one new query token per sequence over its cached keys and values.

    Args:
        q: `[B, Hq, D]` float16/bfloat16 (float32 also accepted).
        k_cache, v_cache: `[num_blocks, block_size, Hkv, D]` of q's dtype, or float8_e4m3fn
            with per-tensor `k_scale`/`v_scale` (stored = value / scale). `Hq % Hkv == 0` (GQA).
        block_tables: `[B, max_blocks]` int32; sequence b's token t is in block
            `block_tables[b, t // block_size]`.
        seq_lens: `[B]` int32; sequence b attends to positions `[0, seq_lens[b])`. Length 0
            gives zeros.
        scale: softmax scale, default `1 / sqrt(D)`.
        out: optional contiguous `[B, Hq, D]` of q's dtype.

    Returns:
        `[B, Hq, D]` in q's dtype. Long contexts are split across the GPU (split-KV with a
        log-sum-exp merge); the split count depends only on shapes, so CUDA graphs stay valid.

    Example::

        out = fastcot.ops.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens)
    """
    num_blocks, block_size, scale, k_scale, v_scale = _check_attention_args(q, k_cache, v_cache, scale, k_scale, v_scale)
    device = k_cache.device
    batch = q.shape[0]
    check_block_tables(block_tables, seq_lens, batch, num_blocks, block_size, device)
    out = _check_out(out, q)
    q, block_tables, seq_lens = unit_stride_rows(q), unit_stride_rows(block_tables), dense_input(seq_lens)
    if batch > 0:
        backend = _backend.resolve("paged_decode_attention", device)
        if backend == "cuda":
            from fastcot.kernels import cuda

            cuda.check_paged_decode(q, k_cache, num_splits=1)  # before launch: dtypes, head sizes
        torch.ops.fastcot.paged_decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, out, scale, k_scale, v_scale, backend
        )
    return out


def paged_prefill_attention(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, *, scale=None, causal=True,
                            k_scale=1.0, v_scale=1.0, out=None, max_query_len=None):
    """Attention of packed new tokens over their sequences' cached context.

    Serves prefill, prefix-cached and chunked prefill, and speculative verification: the new
    tokens must already be in the cache (write them with `write_kv_cache` first).

    Args:
        q: `[T, Hq, D]`: sequence b's new tokens are rows `cu_seqlens_q[b]:cu_seqlens_q[b+1]`.
        k_cache, v_cache, block_tables, k_scale, v_scale, scale: as in `paged_decode_attention`.
        cu_seqlens_q: `[B+1]` int32, starting at 0 and ending at T.
        seq_lens: `[B]` int32 total tokens in the cache for each sequence; its new tokens are
            the last `cu_seqlens_q[b+1] - cu_seqlens_q[b]` of them.
        causal: a token at position p sees positions `<= p` (else all `seq_lens[b]` tokens).
        out: optional contiguous `[T, Hq, D]` of q's dtype.
        max_query_len: optional upper bound on any sequence's new-token count; sizes the
            launch (default T, which needs no device read).

    Returns:
        `[T, Hq, D]` in q's dtype.
    """
    num_blocks, block_size, scale, k_scale, v_scale = _check_attention_args(q, k_cache, v_cache, scale, k_scale, v_scale)
    device = k_cache.device
    tokens = q.shape[0]
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    check_tensor("cu_seqlens_q", cu_seqlens_q, dim=1, dtypes=(torch.int32,), device=device)
    batch = cu_seqlens_q.shape[0] - 1
    if batch < 0:
        raise ValueError("cu_seqlens_q must have B+1 >= 1 entries")
    check_block_tables(block_tables, seq_lens, batch, num_blocks, block_size, device)
    if max_query_len is None:
        max_query_len = tokens
    elif isinstance(max_query_len, bool) or not isinstance(max_query_len, int) or max_query_len < 0:
        raise ValueError(f"max_query_len must be a non-negative int, got {max_query_len!r}")
    if batch > 0 and index_checks_enabled(device):
        _check_query_layout(cu_seqlens_q, seq_lens, tokens, max_query_len)
    out = _check_out(out, q)
    q, block_tables = unit_stride_rows(q), unit_stride_rows(block_tables)
    cu_seqlens_q, seq_lens = dense_input(cu_seqlens_q), dense_input(seq_lens)
    if tokens > 0 and batch > 0:
        backend = _backend.resolve("paged_prefill_attention", device)
        torch.ops.fastcot.paged_prefill_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, out,
            scale, causal, k_scale, v_scale, max_query_len, backend,
        )
    return out


def _check_attention_args(q, k_cache, v_cache, scale, k_scale, v_scale):
    """Checks shared by decode and prefill; returns (num_blocks, block_size, scale, k_scale, v_scale)."""
    num_blocks, block_size, num_kv_heads, head_dim = check_cache_pair(k_cache, v_cache)
    check_tensor("q", q, dim=3, dtypes=FLOAT_DTYPES, device=k_cache.device)
    check_query_dtype(q, k_cache.dtype)
    check_heads(q.shape[1], num_kv_heads, q.shape[2], head_dim)
    k_scale, v_scale = check_scales(k_scale, v_scale, k_cache.dtype)
    return num_blocks, block_size, _check_scale(scale, head_dim), k_scale, v_scale


def _check_scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite Python float or None, got {scale!r}")
    return float(scale)


def _check_out(out, q):
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    check_buffer("out", out, shape=q.shape, dtype=q.dtype, device=q.device, of="q", not_aliasing=(("q", q),))
    return out


def _check_query_layout(cu_seqlens_q, seq_lens, tokens: int, max_query_len: int) -> None:
    q_lens = cu_seqlens_q[1:] - cu_seqlens_q[:-1]
    first, last = int(cu_seqlens_q[0]), int(cu_seqlens_q[-1])
    if first != 0 or last != tokens or bool((q_lens < 0).any()):
        raise ValueError(f"cu_seqlens_q must rise from 0 to T={tokens}, got {cu_seqlens_q.tolist()[:8]}...")
    if bool((q_lens > seq_lens).any()):
        b = int((q_lens > seq_lens).nonzero()[0])
        raise ValueError(f"sequence {b} has {int(q_lens[b])} new tokens but seq_lens[{b}] = {int(seq_lens[b])}")
    if int(q_lens.max()) > max_query_len:
        raise ValueError(f"max_query_len={max_query_len} but a sequence has {int(q_lens.max())} new tokens")


# --- registered ops ------------------------------------------------------------------------


@torch.library.custom_op("fastcot::paged_decode_attention", mutates_args=("out",))
def _paged_decode_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, out: torch.Tensor, scale: float, k_scale: float, v_scale: float, backend: str,
) -> None:
    if backend == "triton":
        paged_decode_triton(q, k_cache, v_cache, block_tables, seq_lens, out, scale, k_scale, v_scale)
    elif backend == "cuda":
        paged_decode_cuda(q, k_cache, v_cache, block_tables, seq_lens, out, scale, k_scale, v_scale)
    elif backend == "torch":
        out.copy_(reference.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale, v_scale))
    else:
        raise _backend.BackendError(f"backend {backend!r} has no paged_decode_attention kernel")


@_paged_decode_op.register_fake
def _(q, k_cache, v_cache, block_tables, seq_lens, out, scale, k_scale, v_scale, backend):
    return None


@torch.library.custom_op("fastcot::paged_prefill_attention", mutates_args=("out",))
def _paged_prefill_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, out: torch.Tensor, scale: float, causal: bool,
    k_scale: float, v_scale: float, max_query_len: int, backend: str,
) -> None:
    if backend == "triton":
        paged_prefill_triton(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, out,
                             scale, causal, k_scale, v_scale, max_query_len)
    elif backend == "torch":
        out.copy_(reference.paged_prefill_attention(
            q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale, causal, k_scale, v_scale))
    else:
        raise _backend.BackendError(f"backend {backend!r} has no paged_prefill_attention kernel")


@_paged_prefill_op.register_fake
def _(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, out, scale, causal, k_scale, v_scale,
      max_query_len, backend):
    return None


# --- Triton launchers ----------------------------------------------------------------------


def _fp32_dots(q: torch.Tensor) -> bool:
    """Dots on float32 operands: for float32 queries, and for bfloat16 ones under the
    interpreter, which has no bfloat16 arithmetic. A `meta` query stands for a GPU one (the
    static report compiles the launch the GPU would run), so it keeps tensor-core dots."""
    interpreted = _backend.triton_interpreted(q.device)
    return q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and interpreted)


def _kv_operands(q, k_cache, v_cache, scale, k_scale, v_scale):
    """Cache views and scales as the prefill kernel takes them: a float8 cache goes in as its
    uint8 codes (converted by bit operations in the kernel, so no float8 type reaches the
    compiler and sm_80 compiles), keys as float16 holding value * 2^-8 (bfloat16 with
    value * 2^-120 for bfloat16 tensor-core dots, q then scaled by 2^56 in the kernel) and
    values as float16 with value * 2^-8; the scales carry the rest."""
    qk_scale = scale * k_scale * LOG2E
    if k_cache.dtype != torch.float8_e4m3fn:
        return k_cache, v_cache, qk_scale, v_scale, dict(KV_FP8=False, K_BF16=False)
    k_bf16 = q.dtype == torch.bfloat16 and not _fp32_dots(q)
    qk_scale *= 2.0 ** (64 if k_bf16 else 8)
    return (k_cache.view(torch.uint8), v_cache.view(torch.uint8), qk_scale, v_scale * 2.0 ** 8,
            dict(KV_FP8=True, K_BF16=k_bf16))


def _decode_kv_operands(q, k_cache, v_cache, scale, k_scale, v_scale, arch=90):
    """Cache views, scales and float8 switches for the decode kernel on SM version `arch`. A
    float8 cache goes in as its codes: on sm_89+ int16 pairs converted by `cvt` into float16
    holding the values (by bit operations, value * 2^-8, under the interpreter, which cannot run
    inline PTX); else int32 words of four when the head size is a multiple of 4 (bit operations,
    two values per 32-bit operation), or bytes, both as float16 holding value * 2^-8 (the scales
    carry the 2^8). A bfloat16 query is turned into a float16 one in the kernel
    (`_query_as_f16`), so the dots run in float16 on a GPU and under the interpreter alike."""
    qk_scale = scale * k_scale * LOG2E
    if k_cache.dtype != torch.float8_e4m3fn:
        consts = {"KV_FP8": False, "Q_TO_F16": False, "FP8_WORDS": False, "FP8_PAIRS": False, "FP8_CVT": False,
                  "POS_SCALE": False, "IEEE_FP32": _fp32_dots(q)}
        return k_cache, v_cache, qk_scale, v_scale, consts
    pairs = _fp8_pairs(k_cache.shape[-1], arch)
    words = k_cache.shape[-1] % 4 == 0 and not pairs
    view = torch.int16 if pairs else torch.int32 if words else torch.uint8
    cvt = pairs and not _backend.triton_interpreted(q.device)
    consts = {"KV_FP8": True, "Q_TO_F16": q.dtype == torch.bfloat16, "FP8_WORDS": words, "FP8_PAIRS": pairs,
              "FP8_CVT": cvt, "POS_SCALE": qk_scale > 0, "IEEE_FP32": q.dtype == torch.float32}
    pow2 = 1.0 if cvt else 2.0 ** 8
    return k_cache.view(view), v_cache.view(view), qk_scale * pow2, v_scale * pow2, consts


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# Programs of the shipped decode configuration (`_decode_tiles`, 4 warps, DECODE_STAGES, head_dim 128)
# resident per SM, from its compiled registers and shared memory as `fastcot bench static`
# reports them, by (SM version, float8 cache). tests/static recomputes them from the compiled
# kernel. Other versions use the smallest entry.
TRITON_DECODE_BLOCKS_PER_SM = {(90, False): 6, (90, True): 2, (80, False): 4, (80, True): 2}


def triton_decode_blocks_per_sm(arch: int, kv_fp8: bool) -> int:
    return TRITON_DECODE_BLOCKS_PER_SM.get((arch, kv_fp8), min(TRITON_DECODE_BLOCKS_PER_SM.values()))


def decode_num_splits(batch: int, num_kv_heads: int, max_context: int, sms: int, *, arch: int = 90,
                      kv_fp8: bool = False) -> int:
    """Splits of the context per (sequence, KV head) for the Triton kernel (one program per KV
    head) so that the grid fills whole waves of its resident programs on `sms` SMs of SM version
    `arch` (`fastcot.kernels.cuda.wave_filling_splits`, the CUDA launcher's rule); each split
    keeps at least MIN_TOKENS_PER_SPLIT tokens of capacity. Uses only shapes (the block-table
    width, never lengths) and the device, so a captured graph stays valid."""
    from fastcot.kernels.cuda import wave_filling_splits

    slots = sms * triton_decode_blocks_per_sm(arch, kv_fp8)
    return wave_filling_splits(batch * num_kv_heads, slots,
                               cap=max(1, min(MAX_SPLITS, max_context // MIN_TOKENS_PER_SPLIT)))


def decode_splits(backend: str, batch: int, q_heads: int, num_kv_heads: int, max_context: int, sms: int, *,
                  arch: int = 90, kv_fp8: bool = False) -> int:
    """The split count the `backend` ("triton" or "cuda") decode launcher picks on a GPU with
    `sms` SMs of SM version `arch` for a float8 (`kv_fp8`) or 16-bit cache: for Triton
    `decode_num_splits` over its one program per KV head; for CUDA
    `fastcot.kernels.cuda.decode_num_splits`, which sizes the grid from the kernel's occupancy."""
    if backend == "cuda":  # splits from the CUDA kernel's occupancy: whole waves
        from fastcot.kernels import cuda

        return cuda.decode_num_splits(batch, q_heads, num_kv_heads, max_context, sms, max_splits=MAX_SPLITS,
                                      min_tokens_per_split=MIN_TOKENS_PER_SPLIT)
    return decode_num_splits(batch, num_kv_heads, max_context, sms, arch=arch, kv_fp8=kv_fp8)


def sm_version(device: torch.device) -> int:
    """SM version of a CUDA device (90 for an H100); 90 off CUDA, as `num_sms` sizes for an H100."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    return 90


def _decode_tiles(head_dim: int, kv_fp8: bool = False, fp8_pairs: bool = False) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N) for a head size and cache: K and V tiles of 8 KB each where 16 to 64
    tokens allow it (32 tokens at D = 128 with a 16-bit cache, 64 with float8), so that the
    pipeline's two tiles in flight (DECODE_STAGES) leave 6 programs per SM on sm_90 (2 on sm_80
    with float8, whose conversion needs more shared memory). A float8 cache converted in pairs
    by `cvt` (`fp8_pairs`, sm_89+) takes tiles of 16 KB, up to 128 tokens (128 at D = 128):
    its per-token work is small enough that the per-tile work (cross-warp softmax reductions,
    rescaling the accumulator, the pipeline's waits) decides the instructions per byte."""
    block_d = max(16, _pow2(head_dim))
    if fp8_pairs:
        return block_d, max(16, min(128, 16384 // block_d))
    return block_d, max(16, min(64, 8192 // (block_d * (1 if kv_fp8 else 2))))


def _fp8_pairs(head_dim: int, arch: int) -> bool:
    """Whether a float8 cache of this head size is read as int16 pairs of codes and converted by
    sm_89+'s `cvt` (by bit operations under the interpreter)."""
    return head_dim % 2 == 0 and arch >= 89


# Triton decode software pipeline depth: the loads of one tile are in flight while the previous
# tile is computed (the kernel reads each tile's block-table entries one iteration earlier, so
# the pipeliner double-buffers the K and V copies).
DECODE_STAGES = 3


def paged_decode_triton(q, k_cache, v_cache, block_tables, seq_lens, out, scale, k_scale, v_scale, num_splits=None,
                        arch=None):
    """Launch the split-KV decode kernel (and the merge when split). `num_splits` forces a
    split count (tests compare counts); by default `decode_num_splits` decides. `arch` is the
    SM version to build for (default the device's, 90 off CUDA): it picks the float8 path and
    tiles, and on sm_90+ both kernels launch with PDL (`_backend.triton_pdl`: only for a given
    `arch` or a CUDA device's, never under the interpreter); the static report passes its
    target's, tests pass 80 to run the sm_80 path."""
    from fastcot.kernels.triton.paged_attention import _decode_merge_kernel, _paged_decode_kernel

    batch, q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = q_heads // num_kv_heads
    use_pdl = _backend.triton_pdl(q.device, arch)
    if arch is None:
        arch = sm_version(q.device)
    kv_fp8 = k_cache.element_size() == 1
    # float32 queries (float32 dots) keep the smaller tiles: their operands take twice the registers
    pairs_tiles = kv_fp8 and _fp8_pairs(head_dim, arch) and q.dtype != torch.float32
    block_d, block_n = _decode_tiles(head_dim, kv_fp8, pairs_tiles)
    if num_splits is None:
        num_splits = decode_splits("triton", batch, q_heads, num_kv_heads, block_tables.shape[1] * block_size,
                                   num_sms(q.device), arch=arch, kv_fp8=kv_fp8)
    part_out = part_lse = out  # unused when not split
    if num_splits > 1:
        part_out = torch.empty((batch, q_heads, num_splits, block_d), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, q_heads, num_splits), dtype=torch.float32, device=q.device)
    k_cache, v_cache, qk_scale, v_scale, kv_consts = _decode_kv_operands(q, k_cache, v_cache, scale, k_scale, v_scale,
                                                                         arch)
    _paged_decode_kernel[(batch, num_kv_heads, num_splits)](
        q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_tables_ptr=block_tables, seq_lens_ptr=seq_lens,
        out_ptr=out, part_out_ptr=part_out, part_lse_ptr=part_lse,
        stride_q_b=q.stride(0), stride_q_h=q.stride(1), stride_out_b=out.stride(0), stride_out_h=out.stride(1),
        stride_table_b=block_tables.stride(0),
        stride_block=k_cache.stride(0), stride_slot=k_cache.stride(1), stride_head=k_cache.stride(2),
        qk_scale=qk_scale, v_scale=v_scale,
        HEAD_DIM=head_dim, GROUP=group, GROUP_PAD=max(16, _pow2(group)), BLOCK_D=block_d,
        BLOCK_N=block_n, BLOCK_SIZE=block_size, NUM_SPLITS=num_splits, **kv_consts, USE_PDL=use_pdl,
        num_warps=4, num_stages=DECODE_STAGES, launch_pdl=use_pdl,
    )
    if num_splits > 1:
        _decode_merge_kernel[(batch, q_heads)](
            part_out_ptr=part_out, part_lse_ptr=part_lse, out_ptr=out,
            stride_out_b=out.stride(0), stride_out_h=out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, NUM_SPLITS=num_splits, SPLITS_PAD=max(2, _pow2(num_splits)),
            USE_PDL=use_pdl, num_warps=4, launch_pdl=use_pdl,
        )


def paged_decode_cuda(q, k_cache, v_cache, block_tables, seq_lens, out, scale, k_scale, v_scale, num_splits=None):
    """Launch the csrc split-KV decode kernel (and its merge when split). The split count is
    `decode_splits("cuda", ...)`: whole waves of the kernel's resident blocks, from shapes
    only; `num_splits` forces one (tests)."""
    from fastcot.kernels import cuda

    batch, q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    if num_splits is None:
        num_splits = decode_splits("cuda", batch, q_heads, num_kv_heads, block_tables.shape[1] * block_size,
                                   num_sms(q.device))
    part_out = part_lse = None
    if num_splits > 1:
        part_out = torch.empty((batch, q_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((batch, q_heads, num_splits), dtype=torch.float32, device=q.device)
    cuda.paged_decode_attention(
        q, k_cache, v_cache, block_tables, seq_lens, out,
        qk_scale=scale * k_scale * LOG2E, v_scale=v_scale, num_splits=num_splits,
        part_out=part_out, part_lse=part_lse,
    )


def _prefill_tiles(head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_M, BLOCK_N, num_warps) for a head size, spill-free on sm_80 and sm_90."""
    block_d = max(16, _pow2(head_dim))
    if block_d <= 64:
        return block_d, 64, 64, 4
    return block_d, 64, (64 if block_d <= 128 else 32), 8


def paged_prefill_triton(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, out,
                         scale, causal, k_scale, v_scale, max_query_len):
    from fastcot.kernels.triton.paged_attention import _paged_prefill_kernel

    _, q_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    batch = seq_lens.shape[0]
    block_d, block_m, block_n, num_warps = _prefill_tiles(head_dim)
    grid = (max(1, -(-max_query_len // block_m)), batch, q_heads)
    k_cache, v_cache, qk_scale, v_scale, kv_consts = _kv_operands(q, k_cache, v_cache, scale, k_scale, v_scale)
    _paged_prefill_kernel[grid](
        q_ptr=q, k_cache_ptr=k_cache, v_cache_ptr=v_cache, block_tables_ptr=block_tables,
        cu_seqlens_q_ptr=cu_seqlens_q, seq_lens_ptr=seq_lens, out_ptr=out,
        stride_q_t=q.stride(0), stride_q_h=q.stride(1), stride_out_t=out.stride(0), stride_out_h=out.stride(1),
        stride_table_b=block_tables.stride(0),
        stride_block=k_cache.stride(0), stride_slot=k_cache.stride(1), stride_head=k_cache.stride(2),
        qk_scale=qk_scale, v_scale=v_scale,
        HEAD_DIM=head_dim, GROUP=q_heads // num_kv_heads, BLOCK_D=block_d,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_SIZE=block_size,
        CAUSAL=causal, IEEE_FP32=_fp32_dots(q), **kv_consts,
        num_warps=num_warps, num_stages=2,
    )


def aot_specs():
    """Decode for head sizes 64/128/256, GQA 1/4/8, split or not, 16-bit and float8 caches;
    its merge; prefill for each head size, causal or not. sm_90 launches decode and merge with
    PDL: `pdl` variants (sm_90 only) of the merge and of the decode kernels at head size 128."""
    from fastcot.kernels.aot import KernelSpec
    from fastcot.kernels.triton.paged_attention import (
        _decode_merge_kernel,
        _paged_decode_kernel,
        _paged_prefill_kernel,
    )

    aligned_common = ("q_ptr", "k_cache_ptr", "v_cache_ptr", "block_tables_ptr", "seq_lens_ptr", "out_ptr",
                      "stride_q_h", "stride_out_h", "stride_block", "stride_slot", "stride_head")

    def decode(dtype, cache, head_dim, group, splits, arch=None, pdl=False):
        if pdl:
            arch = 90  # PDL variants are sm_90's
        # A float8 cache is passed as int16 pairs of codes converted by `cvt` on sm_90 and as
        # int32 words of four converted by bit operations on sm_80 (head_dim % 4 == 0).
        fp8 = cache == "fp8e4nv"
        pairs = fp8 and arch == 90
        view = "*i16" if pairs else "*i32" if fp8 else f"*{cache}"
        block_d, block_n = _decode_tiles(head_dim, fp8, pairs)
        return KernelSpec(
            name=f"paged_decode {dtype} cache={cache} d{head_dim} gqa{group} splits={splits}{' pdl' if pdl else ''}",
            fn=_paged_decode_kernel, num_warps=4, num_stages=DECODE_STAGES,
            signature={"q_ptr": f"*{dtype}", "k_cache_ptr": view, "v_cache_ptr": view,
                       "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32", "out_ptr": f"*{dtype}",
                       "part_out_ptr": "*fp32", "part_lse_ptr": "*fp32",
                       "stride_q_b": "i32", "stride_q_h": "i32", "stride_out_b": "i32", "stride_out_h": "i32",
                       "stride_table_b": "i32", "stride_block": "i64", "stride_slot": "i32", "stride_head": "i32",
                       "qk_scale": "fp32", "v_scale": "fp32"},
            constexprs={"HEAD_DIM": head_dim, "GROUP": group, "GROUP_PAD": max(16, _pow2(group)), "BLOCK_D": block_d,
                        "BLOCK_N": block_n, "BLOCK_SIZE": 16, "NUM_SPLITS": splits, "IEEE_FP32": False,
                        "KV_FP8": fp8, "Q_TO_F16": fp8 and dtype == "bf16", "FP8_WORDS": fp8 and not pairs,
                        "FP8_PAIRS": pairs, "FP8_CVT": pairs, "POS_SCALE": fp8, "USE_PDL": pdl},
            aligned=aligned_common + ("part_out_ptr", "part_lse_ptr"),
            **({"archs": (arch,)} if arch else {}),
        )

    specs = [decode("fp16", "fp16", d, g, s) for d in (64, 128, 256) for g in (1, 4, 8) for s in (1, 16)]
    specs += [decode("bf16", "bf16", 128, 4, s) for s in (1, 16)]
    specs += [decode("bf16", "fp8e4nv", 128, 4, s, arch) for s in (1, 16) for arch in (80, 90)]
    specs += [decode(dtype, cache, 128, g, s, pdl=True) for dtype, cache in (("fp16", "fp16"), ("bf16", "bf16"))
              for g in (1, 4, 8) for s in (1, 16)]
    specs += [decode("bf16", "fp8e4nv", 128, 4, s, pdl=True) for s in (1, 16)]
    for head_dim, pdl in itertools.product((64, 128, 256), (False, True)):
        block_d, _ = _decode_tiles(head_dim)
        specs.append(KernelSpec(
            name=f"decode_merge fp16 d{head_dim} splits=64{' pdl' if pdl else ''}", fn=_decode_merge_kernel,
            num_warps=4, num_stages=1, archs=(90,) if pdl else (80, 90),
            signature={"part_out_ptr": "*fp32", "part_lse_ptr": "*fp32", "out_ptr": "*fp16",
                       "stride_out_b": "i32", "stride_out_h": "i32"},
            constexprs={"HEAD_DIM": head_dim, "BLOCK_D": block_d, "NUM_SPLITS": 64, "SPLITS_PAD": 64, "USE_PDL": pdl},
            aligned=("part_out_ptr", "part_lse_ptr", "out_ptr", "stride_out_b", "stride_out_h"),
        ))
    for dtype, cache, head_dim, causal in [("fp16", "fp16", 64, True), ("fp16", "fp16", 128, True),
                                           ("fp16", "fp16", 256, True), ("bf16", "bf16", 128, False),
                                           ("bf16", "fp8e4nv", 128, True)]:
        block_d, block_m, block_n, num_warps = _prefill_tiles(head_dim)
        fp8 = cache == "fp8e4nv"  # passed as its uint8 codes
        specs.append(KernelSpec(
            name=f"paged_prefill {dtype} cache={cache} d{head_dim} {'causal' if causal else 'full'}",
            fn=_paged_prefill_kernel, num_warps=num_warps, num_stages=2,
            signature={"q_ptr": f"*{dtype}", "k_cache_ptr": "*u8" if fp8 else f"*{cache}",
                       "v_cache_ptr": "*u8" if fp8 else f"*{cache}",
                       "block_tables_ptr": "*i32", "cu_seqlens_q_ptr": "*i32", "seq_lens_ptr": "*i32",
                       "out_ptr": f"*{dtype}", "stride_q_t": "i32", "stride_q_h": "i32", "stride_out_t": "i32",
                       "stride_out_h": "i32", "stride_table_b": "i32", "stride_block": "i64", "stride_slot": "i32",
                       "stride_head": "i32", "qk_scale": "fp32", "v_scale": "fp32"},
            constexprs={"HEAD_DIM": head_dim, "GROUP": 4, "BLOCK_D": block_d, "BLOCK_M": block_m, "BLOCK_N": block_n,
                        "BLOCK_SIZE": 16, "CAUSAL": causal, "IEEE_FP32": False,
                        "KV_FP8": fp8, "K_BF16": fp8 and dtype == "bf16"},
            aligned=aligned_common[:5] + ("cu_seqlens_q_ptr", "out_ptr", "stride_q_t", "stride_q_h",
                                          "stride_out_t", "stride_out_h", "stride_block", "stride_slot", "stride_head"),
        ))
    return specs

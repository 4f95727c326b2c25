"""`fastcot.ops.int4_matmul`: W4A16 matmul over an `Int4Weight`."""

from __future__ import annotations

from typing import Optional

import torch

from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops._checks import check_buffer, dense_input, unit_stride_rows
from fastcot.ops._int4_configs import Autotuner, Int4MatmulConfig, candidate_configs, m_bucket, num_sms, triton_cdiv
from fastcot.quant.int4 import Int4Weight

ACTIVATION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_autotuner = Autotuner()


def int4_matmul(
    x: torch.Tensor,
    weight: Int4Weight,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`x @ weight.dequantize(x.dtype).T + bias`, reading the weight as packed int4.

    Args:
        x: `[..., K]` float16/bfloat16 (float32 also accepted); any number of leading dims.
        weight: an `Int4Weight` of shape `(N, K)` on x's device.
        bias: optional `[N]` float tensor.
        out: optional contiguous `[..., N]` tensor of x's dtype to write into.

    Returns:
        `[..., N]` in x's dtype (`out` when given). Accumulation is in float32.

    Example::

        w = fastcot.quantize_int4(torch.randn(4096, 4096, device="cuda", dtype=torch.float16))
        y = fastcot.ops.int4_matmul(torch.randn(1, 4096, device="cuda", dtype=torch.float16), w)
    """
    x2d, bias, out2d, result = _validate(x, weight, bias, out)
    if x2d.shape[0] > 0:
        backend = _backend.resolve("int4_matmul", x.device)
        if backend == "cuda":
            from fastcot.kernels import cuda

            check_cuda_mins(weight.mins)
            cuda.check_int4_gemv(x2d, out2d)  # before launch: M > 16 is the triton backend's
        torch.ops.fastcot.int4_matmul(
            x2d, weight.qweight, weight.scales, weight.zeros, weight.perm, weight.group_size,
            bias, out2d, backend, weight.mins,
        )
    return result


def _validate(x, weight, bias, out):
    """Check every argument before any kernel runs; returns x as 2-D rows, the bias as the
    kernels read it, out as 2-D rows, and out. (An Int4Weight's tensors are contiguous by
    construction.)"""
    if not isinstance(weight, Int4Weight):
        raise TypeError(f"weight must be a fastcot.Int4Weight, got {type(weight).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    n, k = weight.shape
    if x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"x must have shape [..., K] with K={k} (the weight's in_features), got {list(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but weight is on {weight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if not bias.is_floating_point():
            raise TypeError(f"bias must be a float tensor, got {bias.dtype}")
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape [N] = [{n}], got {list(bias.shape)}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device} but x is on {x.device}")
        bias = dense_input(bias)
    out_shape = (*x.shape[:-1], n)
    if out is None:
        out = torch.empty(out_shape, dtype=x.dtype, device=x.device)
    else:
        check_buffer("out", out, shape=out_shape, dtype=x.dtype, device=x.device, not_aliasing=(("x", x),))
    return unit_stride_rows(x.reshape(-1, k)), bias, out.view(-1, n), out


@torch.library.custom_op("fastcot::int4_matmul", mutates_args=("out",))
def _int4_matmul_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    perm: Optional[torch.Tensor],
    group_size: int,
    bias: Optional[torch.Tensor],
    out: torch.Tensor,
    backend: str,
    mins: Optional[torch.Tensor] = None,
) -> None:
    """Registered op: `out[M, N] = x[M, K] @ W.T (+ bias)` with the named backend."""
    if backend == "triton":
        int4_matmul_triton(x, qweight, scales, zeros, perm, group_size, bias, out, mins=mins)
    elif backend == "cuda":
        check_cuda_mins(mins)
        int4_matmul_cuda(x, qweight, scales, zeros, perm, group_size, bias, out)
    elif backend == "torch":
        out.copy_(reference.int4_matmul(x, qweight, scales, zeros, perm, group_size, bias, mins=mins))
    else:
        raise _backend.BackendError(f"backend {backend!r} has no int4_matmul kernel")


@_int4_matmul_op.register_fake
def _(x, qweight, scales, zeros, perm, group_size, bias, out, backend, mins=None):
    return None


def check_cuda_mins(mins) -> None:
    """The csrc kernels read q-domain zero points only: a weight with float minimums (GGUF
    Q4_1) is the triton and torch backends'."""
    if mins is not None:
        raise _backend.BackendError(
            "cuda backend: its int4 kernels have no float-minimum (mins, GGUF Q4_1) form; "
            "use fastcot.backend('triton') or 'torch' for this weight"
        )


def int4_matmul_triton(x, qweight, scales, zeros, perm, group_size, bias, out, config: Int4MatmulConfig | None = None,
                       *, mins=None, arch=None):
    """Launch the Triton kernel(s) on 2-D `x [M, K]` into `out [M, N]` (layouts already checked).

    `config` forces a launch configuration (tests use it to cover every code path);
    otherwise the autotuner picks one. `mins` (with `zeros` None): float minimums per group.
    `arch` is the SM version to build for (default the device's; none off CUDA): sm_90 and newer
    launch with programmatic dependent launch (`fastcot.kernels.pdl`); the static report passes
    its target's.
    """
    m, k = x.shape
    n = out.shape[1]
    use_pdl = _backend.triton_pdl(x.device, arch)

    def run(cfg: Int4MatmulConfig) -> None:
        _launch(x, qweight, scales, zeros, perm, group_size, bias, out, cfg, mins, use_pdl)

    if config is None:
        key = (m_bucket(m), n, k, group_size, x.dtype, zeros is None, perm is None, bias is None, mins is None,
               x.device)
        config = _autotuner.pick(key, candidate_configs(m, n, k, group_size, num_sms(x.device)), run, x.device)
    run(config)


def int4_matmul_cuda(x, qweight, scales, zeros, perm, group_size, bias, out) -> None:
    """The csrc GEMV (decode, M <= 16) on 2-D `x [M, K]` into `out [M, N]`.

    It reads the weight as stored, so an act-order `perm` is applied to `x` instead (a gather
    of M x K activations, stored column j taking input channel perm[j]); x rows the kernel
    cannot load 16 bytes at a time are copied to a fresh, aligned buffer first.
    """
    from fastcot.kernels import cuda

    if perm is not None:
        x = x.index_select(1, perm)
    row_bytes = x.stride(0) * x.element_size()
    if x.data_ptr() % 16 or (x.shape[0] > 1 and (row_bytes % 16 or x.stride(0) < x.shape[1])):
        x = x.clone(memory_format=torch.contiguous_format)
    cuda.int4_gemv(x, qweight, scales, zeros, bias, group_size, out)


def int4_dequantize_triton(qweight, scales, zeros, perm, group_size, out, *, block_n=32, block_k=128,
                           mins=None) -> None:
    """Dequantize into `out [N, K]` (any float dtype) in input-channel order; `mins` as in
    `int4_matmul_triton`."""
    from fastcot.kernels.triton.int4_matmul import _int4_dequantize_kernel

    n, k = out.shape
    gs = k if group_size == -1 else group_size
    block_k = min(block_k, gs) if group_size != -1 else block_k  # one scale per row per tile
    _int4_dequantize_kernel[(triton_cdiv(n, block_n), triton_cdiv(k, block_k))](
        qweight_ptr=qweight, scales_ptr=scales, zeros_ptr=_zeros_arg(scales, zeros, mins),
        perm_ptr=qweight if perm is None else perm, out_ptr=out, N=n, K=k,
        GROUP_SIZE=gs, BLOCK_N=block_n, BLOCK_K=block_k,
        HAS_ZEROS=zeros is not None or mins is not None, HAS_PERM=perm is not None, HAS_MINS=mins is not None,
        num_warps=4, num_stages=1,
    )


def _zeros_arg(scales, zeros, mins):
    """The kernels' zero-point pointer: the minimums with HAS_MINS, a dummy when symmetric."""
    if mins is not None:
        return mins
    return scales if zeros is None else zeros


def _launch(x, qweight, scales, zeros, perm, group_size, bias, out, cfg: Int4MatmulConfig, mins=None,
            use_pdl=False) -> None:
    from fastcot.kernels.triton.int4_matmul import _int4_matmul_kernel, _splitk_reduce_kernel

    m, k = x.shape
    # float32 dots for float32 activations, and for bfloat16 ones under the interpreter.
    fp32_dot = x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _backend.triton_interpreted(x.device))
    if cfg.dequant_then_matmul:
        w = torch.empty((out.shape[1], k), dtype=x.dtype, device=x.device)
        int4_dequantize_triton(qweight, scales, zeros, perm, group_size, w, block_n=cfg.block_n, block_k=cfg.block_k,
                               mins=mins)
        if bias is None:
            torch.mm(x, w.t(), out=out)
        else:
            torch.addmm(bias.to(x.dtype), x, w.t(), out=out)
        return
    n = out.shape[1]
    gs = k if group_size == -1 else group_size
    if cfg.block_m == 1:
        if m != 1:
            raise ValueError(f"GEMV configuration {cfg} serves M = 1 only, got M = {m}")
        if cfg.block_k % 64 or (group_size != -1 and cfg.block_k > 2 * gs):
            raise ValueError(f"GEMV configuration {cfg}: block_k must be a multiple of 64 and at most twice "
                             f"the group size ({gs})")
        _launch_gemv(x, qweight, scales, zeros, perm, gs, bias, out, cfg, mins, use_pdl)
        return
    tile_groups = cfg.block_k // gs if (group_size != -1 and cfg.block_k > gs) else 1
    k_per_split = triton_cdiv(triton_cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = triton_cdiv(k, k_per_split)  # never launch a split with no K to cover
    tiles = triton_cdiv(m, cfg.block_m) * triton_cdiv(n, cfg.block_n)
    # 16-row tiles reduce their split inside the kernel; wider ones (8 warps) in a second kernel.
    fused_reduce = split_k > 1 and cfg.block_m == 16
    if split_k > 1:
        partial = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
        locks = gemv_locks(x.device, tiles) if fused_reduce else partial
    else:
        partial = locks = out  # unused
    grid = (tiles, split_k)
    _int4_matmul_kernel[grid](
        x_ptr=x, qweight_ptr=qweight, scales_ptr=scales,
        zeros_ptr=_zeros_arg(scales, zeros, mins),
        perm_ptr=qweight if perm is None else perm,
        bias_ptr=scales if bias is None else bias,
        out_ptr=out, partial_ptr=partial, lock_ptr=locks,
        M=m, N=n, K=k, words_per_row=k // 8, stride_xm=x.stride(0), stride_om=out.stride(0),
        k_per_split=k_per_split,
        GROUP_SIZE=gs, TILE_GROUPS=tile_groups,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        SPLIT_K=split_k, GROUP_M=cfg.group_m,
        HAS_ZEROS=zeros is not None or mins is not None, HAS_PERM=perm is not None, HAS_BIAS=bias is not None,
        IEEE_FP32=fp32_dot,
        DEQUANT_NATIVE=cfg.block_m > 1 and not fp32_dot and scales.dtype == x.dtype and mins is None,
        HAS_MINS=mins is not None,
        BIASED_DOT=cfg.block_m <= 64 and x.dtype in (torch.float16, torch.bfloat16) and tile_groups == 1 and mins is None,
        FUSED_REDUCE=fused_reduce, USE_PDL=use_pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=use_pdl,
        **({"maxnreg": cfg.max_registers} if cfg.max_registers else {}),
    )
    if split_k > 1 and not fused_reduce:
        block_n = 512
        _splitk_reduce_kernel[(m, triton_cdiv(n, block_n))](
            partial_ptr=partial, bias_ptr=scales if bias is None else bias, out_ptr=out,
            M=m, N=n, stride_om=out.stride(0),
            SPLIT_K=split_k, BLOCK_N=block_n, HAS_BIAS=bias is not None,
            num_warps=4,
        )


_gemv_locks: dict = {}
# Every counter buffer ever handed out stays allocated: a CUDA graph captured with a smaller one
# keeps its address, and freeing it on growth would let the graph's replays write freed memory.
_retired_locks: list = []


def gemv_locks(device: torch.device, count: int) -> torch.Tensor:
    """Per-device arrival counters of the in-kernel split-K reductions (the GEMV's and the
    16-row tensor-core tiles'), zero between launches (the last program of each row block or
    tile resets its counter). Allocated, zeroed, once per size class (powers of two, at least
    4096); a smaller buffer is kept alive, never freed, when a larger call replaces it."""
    locks = _gemv_locks.get(device)
    if locks is None or locks.numel() < count:
        if locks is not None:
            _retired_locks.append(locks)
        locks = torch.zeros(max(4096, 1 << (max(count, 1) - 1).bit_length()), dtype=torch.int32, device=device)
        _gemv_locks[device] = locks
    return locks


def gemv_split(k: int, block_k: int, split_k: int) -> tuple[int, int]:
    """`(k_per_split, splits)`: whole BLOCK_K steps per split, and no split without K to cover."""
    steps = triton_cdiv(k, block_k)
    per_split = triton_cdiv(steps, split_k)
    return per_split * block_k, triton_cdiv(steps, per_split)


def _launch_gemv(x, qweight, scales, zeros, perm, gs, bias, out, cfg: Int4MatmulConfig, mins, use_pdl=False) -> None:
    """The decode GEMV (`x` is one row): split-K reduced inside the kernel, one launch."""
    from fastcot.kernels.triton.int4_gemv import _int4_gemv_kernel

    k = x.shape[1]
    n = out.shape[1]
    k_per_split, split_k = gemv_split(k, cfg.block_k, cfg.split_k)
    row_blocks = triton_cdiv(n, cfg.block_n)
    # 16-bit activations are read as int32 pairs (two instructions make both floats, in the
    # registers of the threads that use them); an act-order gather reads them one by one.
    x_pairs = x.dtype in (torch.float16, torch.bfloat16) and perm is None
    if x_pairs:
        row = x[0]  # unit stride (checked by the op)
        x = (row if row.storage_offset() % 2 == 0 else row.clone()).view(torch.int32)
    if split_k > 1:
        partial = torch.empty((split_k, n), dtype=torch.float32, device=x.device)
        locks = gemv_locks(x.device, row_blocks)
    else:
        partial = locks = out  # unused
    _int4_gemv_kernel[(row_blocks, split_k)](
        x_ptr=x, qweight_ptr=qweight, scales_ptr=scales, zeros_ptr=_zeros_arg(scales, zeros, mins),
        perm_ptr=qweight if perm is None else perm, bias_ptr=scales if bias is None else bias,
        out_ptr=out, partial_ptr=partial, lock_ptr=locks,
        N=n, K=k, words_per_row=k // 8, k_per_split=k_per_split,
        GROUP_SIZE=gs, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split_k, EVEN_K=k % cfg.block_k == 0,
        HAS_ZEROS=zeros is not None or mins is not None, HAS_PERM=perm is not None, HAS_BIAS=bias is not None,
        HAS_MINS=mins is not None, X_PAIRS=x_pairs, USE_PDL=use_pdl,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=use_pdl,
        **({"maxnreg": cfg.max_registers} if cfg.max_registers else {}),
    )

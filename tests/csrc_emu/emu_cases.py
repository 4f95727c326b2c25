"""csrc kernel cases for the SIMT emulator, each checked against fastcot.kernels.reference.

Shared by test_emu_kernels.py (in process, every thread order) and test_emu_asan.py, which
runs this file as a script in a child process with the AddressSanitizer build:

    python tests/csrc_emu/emu_cases.py [--order forward] [--only NAME]...   # one JSON line a case

Inputs are random (seeded per case), outputs and split scratch start as NaN. A case passes
when every element is within its bound: bit-exact for int4_dequantize (fp32 math rounded
once, as the reference does), and for the GEMV and attention half an ulp of the output dtype
plus an fp32 accumulation bound (unit roundoff times the terms summed times the sum of their
magnitudes), which a dropped term, group or split would exceed by orders of magnitude.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for simt_emu as a script

import fastcot  # noqa: E402
from fastcot.kernels import reference  # noqa: E402

FP8 = torch.float8_e4m3fn
F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
U32 = 2.0**-24  # fp32 unit roundoff


@dataclass
class Outcome:
    max_error: float
    worst_ratio: float  # max of error / bound (<= 1 passes)
    detail: str = ""
    launches: list = field(default_factory=list)
    output: torch.Tensor | None = None

    @property
    def ok(self) -> bool:
        return self.worst_ratio <= 1.0 and not self.detail


def half_ulp(ref: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half the spacing of `dtype` at |ref|: the rounding of a result to the output dtype."""
    info = torch.finfo(dtype)
    mag = ref.abs().clamp_min(info.smallest_normal)
    return torch.exp2(torch.floor(torch.log2(mag))) * info.eps / 2


def compare(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, what: str) -> Outcome:
    err = (got.double() - ref.double()).abs()
    bad = ~(err <= bound)  # NaN (an element never written) counts as bad
    ratio = torch.where(bad & err.isnan(), torch.full_like(err, math.inf), err / bound.clamp_min(1e-300))
    detail = ""
    if bad.any():
        i = tuple(int(v) for v in torch.unravel_index(ratio.argmax(), got.shape))
        detail = (f"{what}: {int(bad.sum())}/{got.numel()} elements off; worst at {i}: got {got[i].item()!r}, "
                  f"expected {ref[i].item()!r} (bound {bound[i].item():.3g}); NaN: {int(got.isnan().sum())}")
    finite = err[~err.isnan()]
    return Outcome(finite.max().item() if finite.numel() else 0.0, ratio.max().item() if ratio.numel() else 0.0,
                   detail)


# ---- int4 ----------------------------------------------------------------------------------------


def make_weight(n, k, group_size, scale_dtype, *, symmetric, act_order, gen) -> fastcot.Int4Weight:
    """Every nibble value, scales of both signs, fractional zero points, a random perm."""
    groups = 1 if group_size == -1 else k // group_size
    qweight = torch.randint(-(2**31), 2**31, (n, k // 8), generator=gen, dtype=torch.int64).to(torch.int32)
    signs = torch.randint(0, 2, (groups, n), generator=gen) * 2 - 1
    scales = ((torch.rand(groups, n, generator=gen) * 0.05 + 1e-3) * signs).to(scale_dtype)
    zeros = None if symmetric else (torch.rand(groups, n, generator=gen) * 15).to(scale_dtype)
    perm = torch.randperm(k, generator=gen).to(torch.int32) if act_order else None
    return fastcot.Int4Weight(qweight=qweight, scales=scales, zeros=zeros, perm=perm, group_size=group_size,
                              shape=(n, k))


@dataclass(frozen=True)
class Dequant:
    n: int
    k: int
    group_size: int
    out_dtype: torch.dtype
    scale_dtype: torch.dtype
    symmetric: bool = False
    act_order: bool = False
    misaligned_out: bool = False  # out one element into its storage: the scalar store path

    kernel = "int4_dequantize"

    def run(self, emulator, gen) -> Outcome:
        w = make_weight(self.n, self.k, self.group_size, self.scale_dtype, symmetric=self.symmetric,
                        act_order=self.act_order, gen=gen)
        storage = torch.full((self.n * self.k + 1,), float("nan"), dtype=self.out_dtype)
        out = storage[1:].view(self.n, self.k) if self.misaligned_out else storage[:-1].view(self.n, self.k)
        emulator.int4_dequantize(w, out)
        ref = reference.int4_dequantize(w.qweight, w.scales, w.zeros, w.perm, w.group_size, self.out_dtype)
        outcome = compare(out, ref, torch.zeros(out.shape, dtype=torch.float64), "int4_dequantize (bit for bit)")
        outcome.output = out
        return outcome


@dataclass(frozen=True)
class Gemv:
    n: int
    k: int
    group_size: int
    m: int
    x_dtype: torch.dtype
    scale_dtype: torch.dtype
    symmetric: bool = False
    act_order: bool = False
    bias: bool = False

    kernel = "int4_gemv"

    def run(self, emulator, gen) -> Outcome:
        w = make_weight(self.n, self.k, self.group_size, self.scale_dtype, symmetric=self.symmetric,
                        act_order=self.act_order, gen=gen)
        x = torch.randn(self.m, self.k, generator=gen).to(self.x_dtype)
        bias = torch.randn(self.n, generator=gen).to(self.scale_dtype) if self.bias else None
        out = torch.full((self.m, self.n), float("nan"), dtype=self.x_dtype)
        emulator.int4_gemv(x, w, bias, out)
        ref = reference.int4_matmul(x.double(), w.qweight, w.scales, w.zeros, w.perm, w.group_size, bias,
                                    compute_dtype=torch.float64)
        # fp32 dequantization is exact up to ~2 ulp of 15 |scale| per weight; the sum is over K terms.
        dense = reference.int4_dequantize(w.qweight, w.scales, w.zeros, w.perm, w.group_size, torch.float64)
        scale_cols = w.scales.double().abs().repeat_interleave(w.group_size if w.group_size != -1 else self.k, dim=0)
        scale_cols = scale_cols.t() if w.perm is None else scale_cols.t()[:, torch.argsort(w.perm.long())]
        magnitude = x.double().abs() @ (dense.abs() + 32 * scale_cols).t()
        if bias is not None:
            magnitude = magnitude + bias.double().abs()
        bound = half_ulp(ref, self.x_dtype) + (self.k + 64) * U32 * magnitude
        outcome = compare(out, ref, bound, "int4_gemv")
        outcome.output = out
        return outcome


# ---- paged decode attention -------------------------------------------------------------------


@dataclass(frozen=True)
class Decode:
    q_dtype: torch.dtype
    cache: str  # "same" or "fp8"
    q_heads: int
    kv_heads: int
    head_dim: int
    block_size: int
    seq_lens: tuple[int, ...]
    num_splits: int = 1
    q_scale: float = 1.0  # a large one gives logits in the thousands
    strided: bool = False  # q and out as views into wider rows

    kernel = "paged_decode_attention"

    def run(self, emulator, gen) -> Outcome:
        b, hq, hkv, d, bs = len(self.seq_lens), self.q_heads, self.kv_heads, self.head_dim, self.block_size
        blocks_needed = [-(-s // bs) for s in self.seq_lens]
        num_blocks = sum(blocks_needed) + 3
        k_scale, v_scale = (0.02, 0.03) if self.cache == "fp8" else (1.0, 1.0)
        shape = (num_blocks, bs, hkv, d)
        k_cache = torch.randn(shape, generator=gen)
        v_cache = torch.randn(shape, generator=gen)
        if self.cache == "fp8":
            k_cache, v_cache = (k_cache / k_scale).to(FP8), (v_cache / v_scale).to(FP8)
        else:
            k_cache, v_cache = k_cache.to(self.q_dtype), v_cache.to(self.q_dtype)
        width = max(blocks_needed + [1]) + 2
        tables = torch.full((b, width), -7, dtype=torch.int32)  # garbage past each sequence's blocks
        order, used = torch.randperm(num_blocks, generator=gen), 0
        for i, count in enumerate(blocks_needed):
            tables[i, :count] = order[used : used + count].to(torch.int32)
            used += count
        lens = torch.tensor(self.seq_lens, dtype=torch.int32)
        q = (torch.randn(b, hq, d, generator=gen) * self.q_scale).to(self.q_dtype)
        out = torch.full((b, hq, d), float("nan"), dtype=self.q_dtype)
        if self.strided:
            q = torch.cat([q, q[:, :1]], dim=1)[:, :hq]  # rows of Hq + 1 heads: stride_q_b != Hq * D
            out = torch.full((b, hq + 2, d), float("nan"), dtype=self.q_dtype)[:, 1 : hq + 1]
        scale = 0.07
        emulator.paged_decode_attention(q, k_cache, v_cache, tables, lens, out, scale=scale, k_scale=k_scale,
                                        v_scale=v_scale, num_splits=self.num_splits)
        ref = reference.paged_decode_attention(q.double(), k_cache, v_cache, tables, lens, scale, k_scale=k_scale,
                                               v_scale=v_scale, compute_dtype=torch.float64)
        # Scores: fp32 dots of D terms; softmax and P.V: sums over the sequence; exp2f within 2 ulp.
        v_max = (v_cache.float().abs().max().item() * v_scale) if v_cache.numel() else 0.0
        logit = q.double().abs().amax().item() * (k_cache.float().abs().max().item() * k_scale) * d * scale
        longest = max(self.seq_lens + (1,))
        bound = half_ulp(ref, self.q_dtype) + U32 * v_max * (4 * (d + longest) + 8 * logit + 64)
        # The tensor-core products take P (and, over an fp8 cache, q) rounded to their 16-bit
        # type: bfloat16 for bf16 caches, float16 for fp16 and fp8 ones. A relative error u in
        # every p moves the output by at most u * v_max; one in q moves each score by u * logit.
        u_p = 2.0**-9 if self.cache != "fp8" and self.q_dtype == BF16 else 2.0**-11
        u_q = 2.0**-11 if self.cache == "fp8" and self.q_dtype != F16 else 0.0
        bound = bound + 1.5 * v_max * (u_p + 2 * u_q * logit)
        outcome = compare(out, ref, bound, "paged_decode_attention")
        if (out[lens == 0] != 0).any():
            outcome.detail += " a sequence of length 0 did not give zeros;"
        outcome.output = out
        return outcome


def _dequant_cases():
    shapes = [(37, 192, 64), (13, 96, 32), (40, 384, 128), (9, 136, -1)]
    dtypes = [F16, BF16, F32]
    cases = []
    for i, (n, k, gs) in enumerate(shapes):
        for j, (out_dtype, scale_dtype) in enumerate((o, s) for o in dtypes for s in dtypes):
            sym_act = (i + j) % 2 == 1
            cases.append(Dequant(n, k, gs, out_dtype, scale_dtype, symmetric=sym_act, act_order=sym_act))
    cases += [Dequant(13, 96, 32, F16, F16, misaligned_out=True), Dequant(13, 96, 32, BF16, F32, symmetric=True,
                                                                          misaligned_out=True)]
    return cases


CASES = {
    **{f"dequant-{c.n}x{c.k}-g{c.group_size}-{str(c.out_dtype)[6:]}-s{str(c.scale_dtype)[6:]}"
       f"{'-sym-perm' if c.act_order else ''}{'-misaligned' if c.misaligned_out else ''}": c for c in _dequant_cases()},
    **{f"gemv-{c.n}x{c.k}-g{c.group_size}-m{c.m}-{str(c.x_dtype)[6:]}-s{str(c.scale_dtype)[6:]}"
       f"{'-sym' if c.symmetric else ''}{'-perm' if c.act_order else ''}{'-bias' if c.bias else ''}": c for c in [
        Gemv(200, 384, 128, 1, F16, F16),
        Gemv(200, 384, 128, 16, BF16, BF16, symmetric=True, bias=True),
        Gemv(37, 96, 32, 3, F32, F32, act_order=True, bias=True),
        Gemv(37, 96, 32, 2, F16, BF16, symmetric=True, act_order=True),
        Gemv(72, 192, 64, 5, BF16, F16, bias=True),
        Gemv(72, 192, 64, 9, F32, BF16, symmetric=True),
        Gemv(40, 136, -1, 4, F16, F32, bias=True),           # K % 32 != 0: one word per lane (VEC=1)
        Gemv(40, 136, -1, 1, BF16, BF16, symmetric=True, act_order=True),
        Gemv(13, 72, -1, 7, F16, F16),                       # K = 72: VEC=1, an M tile of 8
        # The tensor-core kernel (16-bit x, scales of x's dtype, K and groups multiples of 128):
        Gemv(37, 640, 128, 1, BF16, BF16, act_order=True),   # odd N, 5 chunks over 4 warps
        Gemv(45, 768, 128, 5, F16, F16, symmetric=True, bias=True),  # 6 chunks over 4 warps
        Gemv(19, 384, -1, 9, BF16, BF16, bias=True),         # one group over 3 chunks, M tile 16
        Gemv(24, 256, 128, 16, F16, F16, act_order=True),
        Gemv(20, 4096, 128, 1, F16, F16, bias=True),         # 32 chunks over 8 warps: the ring refills
        Gemv(33, 6400, -1, 12, BF16, BF16, symmetric=True),  # 50 chunks over 16 warps, one group, odd N
        Gemv(45, 1024, -1, 16, F16, F16, act_order=True, bias=True),  # M tile 16 with zero points, 2 blocks
    ]},
    **{f"decode-{str(c.q_dtype)[6:]}-{c.cache}-h{c.q_heads}/{c.kv_heads}-d{c.head_dim}-b{c.block_size}"
       f"-s{c.num_splits}{'-strided' if c.strided else ''}{'-hot' if c.q_scale > 1 else ''}": c for c in [
        Decode(F16, "same", 4, 4, 64, 8, (0, 1, 77, 24, 200)),               # GQA 1
        Decode(BF16, "same", 8, 2, 128, 16, (0, 1, 77, 48, 200), num_splits=3),  # GQA 4, merge
        Decode(F32, "fp8", 16, 2, 64, 64, (0, 1, 77, 192, 200)),              # GQA 8, fp8 under an fp32 query
        Decode(F16, "fp8", 8, 2, 128, 16, (300, 5, 0), num_splits=4),
        Decode(BF16, "fp8", 16, 2, 128, 16, (5, 130), num_splits=2),          # bf16 query over fp8
        Decode(F16, "same", 12, 1, 64, 32, (70, 0, 33), num_splits=2),        # GQA 12: a partial head tile
        Decode(BF16, "same", 4, 2, 256, 256, (259, 1)),                       # D 256, blocks of 256
        Decode(F16, "same", 2, 2, 128, 8, (1, 0, 130), num_splits=64),        # most splits empty
        Decode(F16, "same", 8, 2, 64, 16, (45, 17), strided=True),
        Decode(F16, "same", 4, 1, 64, 16, (100, 1), q_scale=300.0),           # logits in the thousands
        Decode(F16, "same", 4, 1, 64, 8, (2101, 3)),                           # 263 blocks: the table window moves
        Decode(F32, "fp8", 8, 2, 128, 32, (0, 97, 33), num_splits=5),         # fp8 scales, odd lengths, merge
        Decode(F16, "fp8", 4, 2, 256, 8, (40, 0, 77), num_splits=2),          # fp8, D 256 (no prefetch), blocks of 8
    ]},
}


def run_case(emulator, name: str) -> Outcome:
    """Runs case `name` on fresh random inputs (seeded by the case); its launches are logged."""
    gen = torch.Generator().manual_seed(list(CASES).index(name) + 1)
    emulator.launches()  # drop earlier launches from the log
    try:
        outcome = CASES[name].run(emulator, gen)
    except Exception as e:  # reported per case; the caller decides
        return Outcome(math.inf, math.inf, f"{type(e).__name__}: {e}")
    outcome.launches = emulator.launches()
    return outcome


def main() -> int:
    from simt_emu import emulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", default="forward", choices=["forward", "reverse", "random"])
    parser.add_argument("--only", action="append", help="run only this case (repeatable)")
    args = parser.parse_args()
    with emulator.thread_order(args.order, seed=1):
        for name in args.only or list(CASES):
            o = run_case(emulator, name)
            print(json.dumps({"case": name, "ok": o.ok, "max_error": o.max_error, "worst_ratio": o.worst_ratio,
                              "detail": o.detail}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Int4Weight layout, quantize_int4 round trips, GPTQ/AWQ import, and bad input."""

import pytest
import torch
from formats import dequant_awq, dequant_gptq, pack_awq, pack_gptq
from helpers import assert_close

import fastcot
from fastcot.kernels import reference


def test_packed_nibble_order():
    q = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]])
    word = reference.pack_int4_rows(q)
    assert word.dtype == torch.int32 and word.item() == 0xF7654321 - 2**32
    assert torch.equal(reference.unpack_int4_rows(word), q.int())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n,k,group_size", [(37, 192, 64), (16, 96, 32), (10, 384, 128), (9, 136, -1)])
def test_quantize_round_trip_error_bound(dtype, symmetric, n, k, group_size):
    w = torch.randn(n, k).to(dtype)
    qw = fastcot.quantize_int4(w, group_size=group_size, symmetric=symmetric)
    assert qw.shape == (n, k) and qw.group_size == group_size
    assert qw.scales.dtype == dtype and (qw.zeros is None) == symmetric
    deq = qw.dequantize(torch.float64)
    gs = k if group_size == -1 else group_size
    step = qw.scales.double().t().repeat_interleave(gs, dim=1)
    # Half a step from rounding; symmetric clips the top value by up to one step.
    bound = step * (1.0 if symmetric else 0.5) * (1 + 1e-3)
    err = (deq - w.double()).abs()
    assert (err <= bound).all(), f"worst error {(err / bound).max():.3f} of the bound"
    assert err.max() > 0  # quantization did happen


def test_quantize_constant_and_zero_groups():
    w = torch.zeros(8, 64)
    w[1] = 3.0
    qw = fastcot.quantize_int4(w, group_size=32)
    assert torch.equal(qw.dequantize(torch.float32), w)


def test_dequantize_to_device_and_repr():
    qw = fastcot.quantize_int4(torch.randn(16, 64), group_size=32)
    assert qw.to("cpu").shape == (16, 64)
    assert qw.nbytes == 16 * 8 * 4 + 2 * (2 * 16 * 4)
    assert "Int4Weight(shape=(16, 64)" in repr(qw)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(group_size=16), ValueError, "group_size must be one of"),
    (dict(group_size=256), ValueError, "group_size must be one of"),
    (dict(group_size=128), ValueError, "does not divide K=96"),
    (dict(group_size="128"), TypeError, "group_size must be an int"),
])
def test_quantize_bad_group_size(bad, exc, match):
    with pytest.raises(exc, match=match):
        fastcot.quantize_int4(torch.randn(8, 96), **bad)


def test_quantize_bad_weight():
    with pytest.raises(ValueError, match="multiple of 8"):
        fastcot.quantize_int4(torch.randn(8, 100), group_size=-1)
    with pytest.raises(ValueError, match="2-D"):
        fastcot.quantize_int4(torch.randn(8))
    with pytest.raises(TypeError, match="float16/bfloat16/float32"):
        fastcot.quantize_int4(torch.ones(8, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        fastcot.quantize_int4(torch.full((8, 128), float("nan")))


def test_int4weight_checks_its_tensors():
    qw = fastcot.quantize_int4(torch.randn(16, 64), group_size=32)
    fields = dict(qweight=qw.qweight, scales=qw.scales, zeros=qw.zeros, perm=None, group_size=32, shape=(16, 64))
    with pytest.raises(ValueError, match="qweight must be contiguous"):
        fastcot.Int4Weight(**{**fields, "qweight": torch.zeros(8, 16, dtype=torch.int32).t()})
    with pytest.raises(TypeError, match="qweight must be int32"):
        fastcot.Int4Weight(**{**fields, "qweight": qw.qweight.long()})
    with pytest.raises(ValueError, match=r"scales must have shape \[G, N\]"):
        fastcot.Int4Weight(**{**fields, "scales": qw.scales[:1]})
    with pytest.raises(TypeError, match="zeros must have the scales' dtype"):
        fastcot.Int4Weight(**{**fields, "zeros": qw.zeros.half()})
    with pytest.raises(ValueError, match=r"perm must be a contiguous \[K\]"):
        fastcot.Int4Weight(**{**fields, "perm": torch.arange(63, dtype=torch.int32)})


# --- GPTQ and AWQ import -------------------------------------------------------------------

def random_checkpoint(n, k, group_size, *, zero_range=(0, 16)):
    g = 1 if group_size == -1 else k // group_size
    q = torch.randint(0, 16, (n, k))
    zeros = torch.randint(*zero_range, (g, n))
    scales = (torch.rand(g, n) * 0.1 + 0.01).half()
    return q, zeros, scales


def act_order_g_idx(k, group_size):
    return ((torch.arange(k) // group_size)[torch.randperm(k)]).to(torch.int32)


@pytest.mark.parametrize("checkpoint_format", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("n,k,group_size", [(24, 128, 32), (16, 192, 64), (8, 64, -1)])
def test_from_gptq_matches_format_definition(checkpoint_format, act_order, n, k, group_size):
    # Classic gptq cannot represent a true zero point of 0 (it stores zero - 1).
    low = 1 if checkpoint_format == "gptq" else 0
    q, zeros, scales = random_checkpoint(n, k, group_size, zero_range=(low, 16))
    g_idx = act_order_g_idx(k, group_size) if act_order and group_size != -1 else None
    qweight, qzeros = pack_gptq(q, zeros, g_idx, checkpoint_format)
    weight = fastcot.Int4Weight.from_gptq(
        qweight, qzeros, scales, g_idx, group_size=group_size, sym=False, checkpoint_format=checkpoint_format
    )
    expected = dequant_gptq(qweight, qzeros, scales, g_idx, group_size, checkpoint_format)
    assert weight.shape == (n, k) and (weight.perm is not None) == (g_idx is not None)
    assert_close(weight.dequantize(torch.float64), expected, atol=0, rtol=0)


def test_gptq_act_order_through_the_kernels(device):
    n, k, gs = 40, 256, 64
    q, zeros, scales = random_checkpoint(n, k, gs, zero_range=(1, 16))
    g_idx = act_order_g_idx(k, gs)
    qweight, qzeros = pack_gptq(q, zeros, g_idx, "gptq")
    weight = fastcot.Int4Weight.from_gptq(qweight, qzeros, scales, g_idx, group_size=gs, sym=False).to(device)
    x = torch.randn(3, k)
    expected = x.double() @ dequant_gptq(qweight, qzeros, scales, g_idx, gs, "gptq").t()
    for backend in ["torch", "triton"]:
        with fastcot.backend(backend):
            y = fastcot.ops.int4_matmul(x.to(device), weight)
        assert_close(y.cpu(), expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("checkpoint_format,stored_zero", [("gptq", 7), ("gptq_v2", 8)])
def test_from_gptq_symmetric(checkpoint_format, stored_zero):
    n, k = 16, 64
    q, _, scales = random_checkpoint(n, k, 32)
    zeros = torch.full((2, n), 8)
    qweight, qzeros = pack_gptq(q, zeros, None, checkpoint_format)
    assert ((qzeros.long() & 0xF) == stored_zero).all()
    weight = fastcot.Int4Weight.from_gptq(
        qweight, qzeros, scales, group_size=32, sym=True, checkpoint_format=checkpoint_format
    )
    assert weight.zeros is None
    expected = dequant_gptq(qweight, qzeros, scales, None, 32, checkpoint_format)
    assert_close(weight.dequantize(torch.float64), expected, atol=0, rtol=0)
    other = "gptq_v2" if checkpoint_format == "gptq" else "gptq"
    with pytest.raises(ValueError, match="zero points other than 8"):
        fastcot.Int4Weight.from_gptq(qweight, qzeros, scales, group_size=32, sym=True, checkpoint_format=other)


@pytest.mark.parametrize("n,k,group_size", [(16, 128, 32), (24, 256, 128), (8, 64, -1)])
def test_from_awq_matches_format_definition(n, k, group_size):
    q, zeros, scales = random_checkpoint(n, k, group_size)
    qweight, qzeros = pack_awq(q, zeros)
    weight = fastcot.Int4Weight.from_awq(qweight, qzeros, scales, group_size=group_size)
    expected = dequant_awq(qweight, qzeros, scales, group_size)
    assert_close(weight.dequantize(torch.float64), expected, atol=0, rtol=0)
    # And the interleave really is undone: the logical q comes back.
    assert torch.equal(reference.unpack_int4_rows(weight.qweight), q.int())


class TestImporterBadInput:
    n, k, gs = 16, 64, 32
    q, zeros, scales = random_checkpoint(16, 64, 32)
    qweight, qzeros = pack_gptq(q, zeros, None, "gptq_v2")

    def gptq(self, **kw):
        args = dict(qweight=self.qweight, qzeros=self.qzeros, scales=self.scales, g_idx=None,
                    group_size=self.gs, sym=False, checkpoint_format="gptq_v2")
        args.update(kw)
        return fastcot.Int4Weight.from_gptq(
            args.pop("qweight"), args.pop("qzeros"), args.pop("scales"), args.pop("g_idx"), **args
        )

    def test_format_name(self):
        with pytest.raises(ValueError, match="checkpoint_format must be one of"):
            self.gptq(checkpoint_format="marlin")

    def test_dtypes(self):
        with pytest.raises(TypeError, match="qweight must be int32"):
            self.gptq(qweight=self.qweight.long())
        with pytest.raises(TypeError, match="scales must be float16"):
            self.gptq(scales=self.scales.long())

    def test_shapes(self):
        with pytest.raises(ValueError, match=r"qzeros must have shape \[2, 2\]"):
            self.gptq(qzeros=self.qzeros[:1])
        with pytest.raises(ValueError, match=r"scales must have shape \[G, N\]"):
            self.gptq(scales=self.scales[:, :8])
        with pytest.raises(ValueError, match="N must be a multiple of 8"):
            self.gptq(qweight=torch.zeros(8, 12, dtype=torch.int32))
        with pytest.raises(ValueError, match="does not divide K=64"):
            self.gptq(group_size=128)

    def test_g_idx(self):
        with pytest.raises(ValueError, match=r"g_idx must have shape \[K\]"):
            self.gptq(g_idx=torch.zeros(10, dtype=torch.int32))
        with pytest.raises(ValueError, match="must lie in"):
            self.gptq(g_idx=torch.full((64,), 5, dtype=torch.int32))
        with pytest.raises(ValueError, match="exactly group_size=32"):
            self.gptq(g_idx=torch.cat([torch.zeros(40), torch.ones(24)]).int())

    def test_awq(self):
        qweight, qzeros = pack_awq(self.q, self.zeros)
        with pytest.raises(ValueError, match=r"qzeros must have shape"):
            fastcot.Int4Weight.from_awq(qweight, qzeros[:, :1], self.scales, group_size=32)
        with pytest.raises(ValueError, match=r"scales must have shape"):
            fastcot.Int4Weight.from_awq(qweight, qzeros, self.scales.t(), group_size=32)

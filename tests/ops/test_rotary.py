"""`rotary_embedding` against the float64 reference, and its frequencies and angles against HF's definitions."""

import math

import pytest
import torch
from helpers import TOLERANCE, assert_close, poisoned

import fastcot
from fastcot.kernels import reference
from fastcot.ops import _backend
from fastcot.ops.rotary import _rope_tables, rope_inv_freq, rotary_embedding

ON_GPU = torch.cuda.is_available()
TRITON_HERE = ON_GPU or _backend.triton_interpreter_enabled()
BACKENDS = ["torch"] + (["triton"] if TRITON_HERE else [])
# The interpreter has no bf16 arithmetic; bf16 is covered on the GPU.
DTYPES = [torch.float16, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
LLAMA32 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}
LINEAR = {"type": "linear", "factor": 4.0}  # the older "type" key
SCALINGS = {"none": None, "llama3.1": LLAMA31, "llama3.2": LLAMA32, "linear": LINEAR}


def expected(positions, q, k, head_dim, theta, scaling):
    inv_freq = rope_inv_freq(head_dim, theta, scaling)
    return reference.rotary_embedding(positions.cpu(), q.cpu().double(), k.cpu().double(), inv_freq,
                                      compute_dtype=torch.float64)


def check(actual, ref):
    tol = TOLERANCE[actual.dtype]
    scale = max(1.0, ref.abs().max().item()) if ref.numel() else 1.0
    assert_close(actual.cpu(), ref, atol=tol["atol"] * scale, rtol=tol["rtol"])


HEADS = [  # (Hq, Hkv, head_dim): GQA, MQA, a head dim whose half is not a power of two
    (4, 2, 128),
    (3, 1, 64),
    (2, 2, 96),
    (5, 3, 34),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hq,hkv,head_dim", HEADS)
@pytest.mark.parametrize("t", [1, 3, 17, 0])
@pytest.mark.parametrize("scaling", ["none", "llama3.1"])
def test_matches_reference(backend, dtype, hq, hkv, head_dim, t, scaling, device):
    positions = torch.randint(0, 140_000, (t,), device=device)
    q = torch.randn(t, hq, head_dim, device=device).to(dtype)
    k = torch.randn(t, hkv, head_dim, device=device).to(dtype)
    q_before, k_before = q.clone(), k.clone()
    out_q, out_k = poisoned(q.shape, dtype, device), poisoned(k.shape, dtype, device)
    theta = 500000.0 if scaling != "none" else 10000.0
    with fastcot.backend(backend):
        result = rotary_embedding(positions, q, k, head_dim=head_dim, rope_theta=theta,
                                  rope_scaling=SCALINGS[scaling], out_q=out_q, out_k=out_k)
    assert result[0] is out_q and result[1] is out_k
    ref_q, ref_k = expected(positions, q, k, head_dim, theta, SCALINGS[scaling])
    check(out_q, ref_q)
    check(out_k, ref_k)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("positions_dtype", [torch.int32, torch.int64])
def test_large_positions_one_hot(backend, scaling, positions_dtype, device):
    """A one-hot q picks out one frequency: unit i of the first half becomes (cos, sin) at
    (i, i + D/2), unit i of the second half (-sin, cos) (HF's rotate_half pairing), with the
    angle `position * inv_freq[i]` evaluated here in float64 by `math`."""
    head_dim, theta = 128, 500000.0
    half = head_dim // 2
    positions = torch.tensor([131000, 131071, 100003, 8191, 1, 0], dtype=positions_dtype, device=device)
    t = len(positions)
    eye = torch.eye(head_dim, device=device)
    q = eye[None, :half].expand(t, half, head_dim).contiguous()  # head i: unit i of the first half
    k = eye[None, half:].expand(t, half, head_dim).contiguous()  # head i: unit i of the second half
    with fastcot.backend(backend):
        q_rot, k_rot = rotary_embedding(positions, q, k, head_dim=head_dim, rope_theta=theta,
                                        rope_scaling=SCALINGS[scaling])
    inv_freq = rope_inv_freq(head_dim, theta, SCALINGS[scaling]).tolist()
    cos = torch.tensor([[math.cos(p * f) for f in inv_freq] for p in positions.tolist()], dtype=torch.float64)
    sin = torch.tensor([[math.sin(p * f) for f in inv_freq] for p in positions.tolist()], dtype=torch.float64)
    idx = torch.arange(half)
    tol = {"atol": 1e-6, "rtol": 0}  # float32 cos/sin of values in [-1, 1]
    assert_close(q_rot.cpu()[:, idx, idx], cos, **tol)
    assert_close(q_rot.cpu()[:, idx, idx + half], sin, **tol)
    assert_close(k_rot.cpu()[:, idx, idx], -sin, **tol)
    assert_close(k_rot.cpu()[:, idx, idx + half], cos, **tol)
    off_pair = torch.ones(half, head_dim, dtype=torch.bool)
    off_pair[idx, idx] = False
    off_pair[idx, idx + half] = False
    assert q_rot.cpu()[:, off_pair].abs().max() == 0 and k_rot.cpu()[:, off_pair].abs().max() == 0


def hf_inv_freq(head_dim, theta, scaling):
    """inv_freq from the definitions in transformers' modeling_rope_utils, in float64."""
    base = [theta ** (-(2 * i) / head_dim) for i in range(head_dim // 2)]
    if scaling is None:
        return base
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        return [f / scaling["factor"] for f in base]
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    out = []
    for f in base:
        wavelen = 2 * math.pi / f
        if wavelen < old_context / high:
            out.append(f)
        elif wavelen > old_context / low:
            out.append(f / factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("head_dim,theta", [(128, 500000.0), (64, 500000.0), (128, 10000.0), (96, 1e6)])
def test_inv_freq_matches_hf_definition(scaling, head_dim, theta):
    inv_freq = rope_inv_freq(head_dim, theta, SCALINGS[scaling])
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (head_dim // 2,)
    ref = torch.tensor(hf_inv_freq(head_dim, theta, SCALINGS[scaling]), dtype=torch.float64)
    assert_close(inv_freq, ref, atol=0, rtol=5e-7)  # a few float32 ulps


def test_llama3_scaling_covers_all_three_bands():
    """Llama 3.1's parameters leave high frequencies alone, divide low ones by 8, and blend between."""
    base = rope_inv_freq(128, 500000.0)
    scaled = rope_inv_freq(128, 500000.0, LLAMA31)
    ratio = (base / scaled).double()
    kept, divided = ratio == 1, (ratio - 8).abs() < 1e-5
    blended = ~kept & ~divided
    assert kept.any() and divided.any() and blended.any()
    assert (ratio[blended] > 1).all() and (ratio[blended] < 8).all()


def test_inv_freq_is_cached_per_configuration():
    a = rope_inv_freq(128, 500000.0, dict(LLAMA31))
    assert rope_inv_freq(128, 500000.0, dict(LLAMA31)) is a
    assert rope_inv_freq(128, 500000.0, LLAMA32) is not a
    assert rope_inv_freq(128, 500000.0, LLAMA31, device="cpu") is a


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_of_a_fused_qkv(backend, device):
    """q and k as strided views of one qkv projection; a last dim that is not contiguous is copied."""
    t, hq, hkv, d = 5, 4, 2, 64
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=device)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    positions = torch.arange(100, 100 + t, device=device, dtype=torch.int32)
    with fastcot.backend(backend):
        q_rot, k_rot = rotary_embedding(positions, q, k, head_dim=d)
    ref_q, ref_k = expected(positions, q, k, d, 10000.0, None)
    check(q_rot, ref_q)
    check(k_rot, ref_k)
    strided = torch.randn(t, d, hq, device=device).transpose(1, 2)  # last-dim stride hq
    with fastcot.backend(backend):
        s_rot, _ = rotary_embedding(positions, strided, k, head_dim=d)
    check(s_rot, expected(positions, strided, k, d, 10000.0, None)[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend, device):
    dtype = DTYPES[-1]
    positions = torch.tensor([0, 7, 131000], device=device)
    q = torch.randn(3, 4, 64, device=device).to(dtype)
    k = torch.randn(3, 2, 64, device=device).to(dtype)
    inv_freq, turns = _rope_tables(64, 500000.0, LLAMA31, device)
    torch.library.opcheck(
        torch.ops.fastcot.rotary_embedding.default,
        (positions, q, k, inv_freq, turns, torch.empty_like(q), torch.empty_like(k), backend),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions_dtype", [torch.int32, torch.int64])
def test_strided_positions(backend, positions_dtype, device):
    """A positions view whose elements are not adjacent is read as the values it shows (strided
    positions once reached the kernel as is: T=2, D=64 was 1.5 off)."""
    dtype = DTYPES[-1]
    positions = torch.tensor([5, 0, 131000, 1], dtype=positions_dtype, device=device)[::2]
    q = torch.randn(2, 2, 64, device=device).to(dtype)
    k = torch.randn(2, 1, 64, device=device).to(dtype)
    with fastcot.backend(backend):
        q_rot, k_rot = rotary_embedding(positions, q, k, head_dim=64)
    q_want, k_want = expected(positions, q, k, 64, 10000.0, None)
    check(q_rot, q_want)
    check(k_rot, k_want)


def test_compiles_without_graph_breaks():
    positions = torch.tensor([0, 7, 131000])
    q, k = torch.randn(3, 4, 64), torch.randn(3, 2, 64)

    def f(pos, a, b):
        a, b = rotary_embedding(pos, a, b, head_dim=64, rope_theta=500000.0, rope_scaling=LLAMA31)
        return a * 2, b

    eager = f(positions, q, k)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(positions, q, k)
    for c, e in zip(compiled, eager):
        assert_close(c, e, atol=1e-6, rtol=1e-6)


class TestBadInput:
    positions = torch.arange(3)
    q = torch.randn(3, 4, 64)
    k = torch.randn(3, 2, 64)

    def call(self, positions=None, q=None, k=None, **kwargs):
        kwargs.setdefault("head_dim", 64)
        return rotary_embedding(
            self.positions if positions is None else positions, self.q if q is None else q,
            self.k if k is None else k, **kwargs,
        )

    def test_head_dim(self):
        with pytest.raises(ValueError, match="head_dim must be a positive even integer, got 63"):
            self.call(q=torch.randn(3, 4, 63), k=torch.randn(3, 2, 63), head_dim=63)
        with pytest.raises(ValueError, match="head_dim"):
            self.call(head_dim=64.0)
        with pytest.raises(ValueError, match=r"q must have shape \[T, Hq, head_dim=128\], got \[3, 4, 64\]"):
            self.call(head_dim=128)

    def test_q_and_k(self):
        with pytest.raises(TypeError, match="q must be float16"):
            self.call(q=torch.ones(3, 4, 64, dtype=torch.int32))
        with pytest.raises(ValueError, match="q must have shape"):
            self.call(q=torch.randn(3, 256))
        with pytest.raises(TypeError, match="k must have q's dtype"):
            self.call(k=torch.randn(3, 2, 64, dtype=torch.float16))
        with pytest.raises(ValueError, match=r"k must have shape \[T=3, Hkv, head_dim=64\], got \[4, 2, 64\]"):
            self.call(k=torch.randn(4, 2, 64))
        with pytest.raises(ValueError, match="k is on meta"):
            self.call(k=torch.randn(3, 2, 64, device="meta"))

    def test_positions(self):
        with pytest.raises(TypeError, match="positions must be int32 or int64, got torch.float32"):
            self.call(positions=torch.arange(3.0))
        with pytest.raises(ValueError, match=r"positions must have shape \[T\] = \[3\], got \[4\]"):
            self.call(positions=torch.arange(4))
        with pytest.raises(ValueError, match=r"positions must have shape \[T\]"):
            self.call(positions=torch.arange(3)[None])
        with pytest.raises(ValueError, match="positions is on meta"):
            self.call(positions=torch.arange(3, device="meta"))
        with pytest.raises(TypeError, match="positions must be a torch.Tensor"):
            self.call(positions=[0, 1, 2])

    def test_rope_parameters(self):
        with pytest.raises(ValueError, match="rope_theta must be a positive number"):
            self.call(rope_theta=0.0)
        with pytest.raises(ValueError, match="rope_type must be one of .* got 'yarn'"):
            self.call(rope_scaling={"rope_type": "yarn", "factor": 4.0})
        with pytest.raises(ValueError, match=r"rope_scaling\['low_freq_factor'\] must be a positive number"):
            self.call(rope_scaling={k: v for k, v in LLAMA31.items() if k != "low_freq_factor"})
        with pytest.raises(ValueError, match="high_freq_factor"):
            self.call(rope_scaling={**LLAMA31, "high_freq_factor": 1.0})
        with pytest.raises(TypeError, match="rope_scaling must be a dict"):
            self.call(rope_scaling=8.0)

    def test_outputs(self):
        with pytest.raises(ValueError, match="out_q must have q's shape"):
            self.call(out_q=torch.empty(3, 4, 32))
        with pytest.raises(TypeError, match="out_k must have k's dtype"):
            self.call(out_k=torch.empty(3, 2, 64, dtype=torch.float16))
        with pytest.raises(ValueError, match="out_q must be contiguous"):
            self.call(out_q=torch.empty(3, 64, 4).transpose(1, 2))
        with pytest.raises(ValueError, match="out_q must not share memory with q"):
            self.call(out_q=self.q)
        qkv = torch.randn(3, 8, 64)
        with pytest.raises(ValueError, match="out_k must not share memory with q"):
            self.call(q=qkv[:, :4], k=qkv[:, 4:6], out_k=qkv.view(-1)[: 3 * 2 * 64].view(3, 2, 64))
        out_q = torch.empty(3, 4, 64)
        with pytest.raises(ValueError, match="out_k must not share memory with out_q"):
            self.call(out_q=out_q, out_k=out_q.view(-1)[: 3 * 2 * 64].view(3, 2, 64))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "hq,hkv,head_dim,scaling", [(32, 8, 128, "llama3.1"), (32, 8, 64, "llama3.2"), (64, 8, 128, "none")]
)
@pytest.mark.parametrize("t", [1, 64, 4096])
def test_gpu_real_sizes(dtype, hq, hkv, head_dim, scaling, t):
    positions = torch.randint(0, 131072, (t,), device="cuda")
    positions[0] = 131000
    qkv = torch.randn(t, (hq + 2 * hkv) * head_dim, device="cuda", dtype=dtype)
    q = qkv[:, : hq * head_dim].view(t, hq, head_dim)
    k = qkv[:, hq * head_dim : (hq + hkv) * head_dim].view(t, hkv, head_dim)
    with fastcot.backend("triton"):
        q_rot, k_rot = rotary_embedding(positions, q, k, head_dim=head_dim, rope_theta=500000.0,
                                        rope_scaling=SCALINGS[scaling])
    ref_q, ref_k = expected(positions, q, k, head_dim, 500000.0, SCALINGS[scaling])
    check(q_rot, ref_q)
    check(k_rot, ref_k)
    compiled = torch.compile(
        lambda p, a, b: rotary_embedding(p, a, b, head_dim=head_dim, rope_theta=500000.0,
                                         rope_scaling=SCALINGS[scaling]),
        fullgraph=True,
    )
    check(compiled(positions, q, k)[0], ref_q)


@pytest.mark.gpu
def test_gpu_cuda_graph_replay_with_new_positions():
    t, hq, hkv, d = 8, 32, 8, 128
    positions = torch.zeros(t, dtype=torch.int64, device="cuda")
    q = torch.randn(t, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(t, hkv, d, device="cuda", dtype=torch.bfloat16)
    out_q, out_k = torch.empty_like(q), torch.empty_like(k)

    def step():
        rotary_embedding(positions, q, k, head_dim=d, rope_theta=500000.0, rope_scaling=LLAMA31,
                         out_q=out_q, out_k=out_k)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), fastcot.backend("triton"):
        step()  # warm-up: compile, and build the frequency tables outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), fastcot.backend("triton"):
        step()
    for _ in range(3):
        positions.copy_(torch.randint(0, 131072, (t,), device="cuda"))
        out_q.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        ref_q, ref_k = expected(positions, q, k, d, 500000.0, LLAMA31)
        check(out_q, ref_q)
        check(out_k, ref_k)

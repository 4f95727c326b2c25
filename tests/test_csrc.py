"""The compiled extension fastcot._C (csrc/): build, resource usage, bindings, and kernels vs the reference.

Three tiers: tests that run everywhere (the loader and the report parsers), tests
that run where nvcc exists and so the extension must have been built (import,
freshness, ptxas/cuobjdump cleanliness, argument checks), and GPU tests that
compare the kernels with fastcot.kernels.reference bit for bit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastcot
from fastcot.kernels import cuda, reference

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHS = ["sm_80", "sm_90a"]
REBUILD = 'rebuild with: FASTCOT_BUILD_CUDA=1 pip install --no-build-isolation -e ".[dev]"'


def _load_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


report = _load_by_path("csrc_report", REPO / "tools" / "csrc_report.py")


setup_py = _load_by_path("fastcot_setup", REPO / "setup.py")


def _find_nvcc() -> str | None:
    """The nvcc setup.py would build with (its own search, imported), or None."""
    try:
        return str(setup_py.find_toolkit().nvcc)
    except setup_py.CudaBuildError:
        return None


NVCC = _find_nvcc()
needs_build = pytest.mark.skipif(
    NVCC is None or os.environ.get("FASTCOT_BUILD_CUDA") == "0",
    reason="no nvcc here (or FASTCOT_BUILD_CUDA=0), so fastcot._C is not expected to be built",
)
needs_cuda_backend = pytest.mark.skipif(
    not torch.cuda.is_available() or not cuda.available(),
    reason=f"needs a CUDA device and fastcot._C: {cuda.unavailable_reason() or 'torch sees no CUDA device'}",
)


def expected_archs() -> list[str]:
    if os.environ.get("FASTCOT_CUDA_ARCHS"):
        items = re.split(r"[;,\s]+", os.environ["FASTCOT_CUDA_ARCHS"].strip())
        return [f"sm_{a.lower().replace('.', '').removeprefix('sm_')}" for a in items if a]
    return DEFAULT_ARCHS


def csrc_sha256(root: Path) -> str:
    """The hash setup.py stamps into the extension (setup.py's own function)."""
    return setup_py.csrc_sha256(root)


@pytest.fixture(scope="module")
def ext():
    module = cuda.extension()
    if module is None:
        pytest.fail(f"nvcc is at {NVCC} but {cuda.unavailable_reason()}; {REBUILD}")
    return module


# ---------------------------------------------------------------- everywhere


def test_loader_never_raises_and_explains():
    reason = cuda.unavailable_reason()
    assert cuda.available() == (reason is None)
    if not torch.cuda.is_available():
        assert not cuda.available()
        assert isinstance(reason, str) and reason
    json.dumps(cuda.build_info())  # `fastcot info` prints it


def test_launcher_names_the_backend_when_unavailable():
    if cuda.available():
        pytest.skip("the cuda backend is available here")
    w = torch.zeros(4, 1, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="cuda backend cannot run int4_dequantize"):
        cuda.int4_dequantize(w, torch.ones(1, 4), None, None, -1, torch.empty(4, 8))


PTXAS_CLEAN = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90a'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 14 registers, 4096 bytes smem, used 1 barriers
"""


def test_ptxas_parser_reads_each_kernel_and_arch():
    kernels = report.parse_ptxas_log(PTXAS_CLEAN)
    assert [(k.arch, k.registers, k.shared) for k in kernels] == [("sm_80", 12, 0), ("sm_90a", 14, 4096)]
    assert report.problems(kernels, DEFAULT_ARCHS, "log") == []


def test_ptxas_parser_reports_spills_and_missing_arches():
    clean, spilled = "0 bytes stack frame, 0 bytes spill stores", "8 bytes stack frame, 8 bytes spill stores"
    spilling = PTXAS_CLEAN.replace(clean, spilled, 1)
    found = report.problems(report.parse_ptxas_log(spilling), DEFAULT_ARCHS, "log")
    assert any("spill_stores = 8" in p for p in found) and any("stack = 8" in p for p in found)
    assert report.problems(report.parse_ptxas_log(""), DEFAULT_ARCHS, "log") == [
        "log: no kernels for sm_80",
        "log: no kernels for sm_90a",
    ]


def test_missing_kernel_families_are_reported_per_arch():
    kernels = report.parse_ptxas_log(PTXAS_CLEAN)
    found = report.missing_kernels(kernels, DEFAULT_ARCHS, "log", families=("int4_gemv_kernel",))
    assert found == ["log: no int4_gemv_kernel for sm_80", "log: no int4_gemv_kernel for sm_90a"]
    renamed = PTXAS_CLEAN.replace("_Z1kPf", "_ZN7fastcot16int4_gemv_kernelIfLi1ELi4EEEvNS_12Int4GemvArgsE")
    kernels = report.parse_ptxas_log(renamed)
    assert report.missing_kernels(kernels, DEFAULT_ARCHS, "log", families=("int4_gemv_kernel",)) == []
    assert report.missing_kernels(kernels, ["sm_80"], "log", families=("paged_decode_kernel",)) == [
        "log: no paged_decode_kernel for sm_80"
    ]


def test_ptxas_parser_rejects_truncated_blocks():
    with pytest.raises(ValueError, match="stack/spill"):
        frame_line = "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        report.parse_ptxas_log(PTXAS_CLEAN.replace(frame_line, "", 1))
    with pytest.raises(ValueError, match="incomplete"):
        report.parse_ptxas_log(PTXAS_CLEAN.rsplit("ptxas info    : Used", 1)[0])


CUOBJDUMP_SAMPLE = """\
Fatbin elf code:
================
arch = sm_90a
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:0
 Function _Z1kPf:
  REG:40 STACK:16 SHARED:0 LOCAL:24 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_cuobjdump_parser_reports_local_memory_and_missing_arch():
    kernels = report.parse_resource_usage(CUOBJDUMP_SAMPLE)
    assert [(k.arch, k.registers, k.stack, k.local) for k in kernels] == [("sm_90a", 40, 16, 24)]
    found = report.problems(kernels, DEFAULT_ARCHS, "dump")
    assert "dump: no kernels for sm_80" in found
    assert any("local = 24" in p for p in found)
    with pytest.raises(ValueError, match="_Z1kPf"):
        report.parse_resource_usage(CUOBJDUMP_SAMPLE.replace(" LOCAL:24", ""))


# ---------------------------------------------------------------- where nvcc exists


@needs_build
def test_extension_is_the_one_beside_the_package(ext):
    # An editable install must import the .so built in place, not a stale copy elsewhere.
    assert Path(ext.__file__).parent == Path(fastcot.__file__).parent


@needs_build
def test_extension_was_built_from_these_sources(ext):
    built_from = ext.build_info()["source_sha256"]
    assert built_from == csrc_sha256(REPO), f"fastcot._C is older than csrc/; {REBUILD}"


@needs_build
def test_extension_reports_devices_and_versions_without_crashing(ext):
    if torch.cuda.is_available():
        assert ext.device_count() == torch.cuda.device_count()
        assert ext.device_error() is None
    else:
        assert ext.device_count() == 0
        assert isinstance(ext.device_error(), str)
    assert ext.cuda_runtime_version() == ext.build_info()["cuda_version"]  # the runtime is linked in
    assert ext.build_info()["archs"].split(";") == expected_archs()


@needs_build
def test_extension_does_not_load_a_shared_cudart(ext):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf (binutils) is not installed")
    dynamic = subprocess.run([readelf, "-d", ext.__file__], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    assert needed, f"readelf -d printed no NEEDED entries:\n{dynamic}"
    assert not [lib for lib in needed if "cudart" in lib or lib.startswith("libtorch")], needed


@needs_build
def test_ptxas_log_is_clean_for_every_arch(ext):
    log = Path(ext.__file__).parent / "_C.ptxas.log"
    assert log.is_file(), f"setup.py saves the compiler output beside the extension; missing {log}; {REBUILD}"
    kernels = report.parse_ptxas_log(log.read_text())
    assert report.problems(kernels, expected_archs(), "ptxas log") == []
    assert report.missing_kernels(kernels, expected_archs(), "ptxas log") == []


@needs_build
def test_cuobjdump_resource_usage_is_clean_and_matches_ptxas(ext):
    tool = report.find_cuobjdump()
    assert tool is not None, "no cuobjdump: triton ships one in triton/backends/nvidia/bin, and no toolkit has one"
    so = Path(ext.__file__)
    dumped = report.parse_resource_usage(report.cuobjdump(tool, so, "--dump-resource-usage"))
    assert report.problems(dumped, expected_archs(), "cuobjdump") == []
    assert report.missing_kernels(dumped, expected_archs(), "cuobjdump") == []
    ptxas = report.parse_ptxas_log((so.parent / "_C.ptxas.log").read_text())
    assert {(k.arch, k.name) for k in dumped} == {(k.arch, k.name) for k in ptxas}
    assert {(k.arch, k.name, k.registers) for k in dumped} == {(k.arch, k.name, k.registers) for k in ptxas}
    ptx = ext.build_info()["ptx"]
    if ptx:
        listed = report.cuobjdump(tool, so, "--list-ptx")
        assert f".{ptx.replace('compute_', 'sm_')}.ptx" in listed, listed


@needs_build
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"k": 12}, "multiple of 8"),
        ({"group_size": 12}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"n": -1}, "N >= 0"),
        ({"out_dtype": 9}, "unknown dtype code 9"),
        ({"scales": 0}, "non-null"),
    ],
)
def test_binding_rejects_bad_arguments_before_touching_the_device(ext, changes, message):
    args = dict(qweight=256, scales=256, zeros=0, perm=0, out=256, n=4, k=96, group_size=32,
                out_dtype=ext.DTYPE_FLOAT16, scale_dtype=ext.DTYPE_FLOAT16, device=0, stream=0)
    with pytest.raises(ValueError, match=message):
        ext.int4_dequantize(**{**args, **changes})


@needs_build
def test_binding_does_nothing_for_empty_tensors(ext):
    ext.int4_dequantize(qweight=0, scales=0, zeros=0, perm=0, out=0, n=0, k=96, group_size=32,
                        out_dtype=ext.DTYPE_FLOAT32, scale_dtype=ext.DTYPE_FLOAT32, device=0, stream=0)


GEMV_ARGS = {"x": 256, "qweight": 256, "scales": 256, "zeros": 0, "bias": 0, "out": 256, "m": 4, "n": 8, "k": 256,
             "group_size": 128, "stride_xm": 256, "stride_om": 8, "x_dtype": 1, "scale_dtype": 1, "bias_dtype": 1,
             "device": 0, "stream": 0}


@needs_build
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"m": 17}, "M <= 16"),
        ({"m": -1}, "M, N, K >= 0"),
        ({"k": 12}, "multiple of 8"),
        ({"group_size": 24}, "group_size"),
        ({"group_size": 0}, "group_size"),
        ({"x_dtype": 3}, "unknown dtype code 3"),
        ({"bias_dtype": 7}, "unknown dtype code 7"),
        ({"scales": 0}, "non-null"),
        ({"x": 264}, "16-byte aligned"),
        ({"stride_xm": 100}, "16-byte aligned"),
        ({"stride_om": 4}, "out rows overlap"),
    ],
)
def test_int4_gemv_binding_rejects_bad_arguments_before_touching_the_device(ext, changes, message):
    with pytest.raises(ValueError, match=message):
        ext.int4_gemv(**{**GEMV_ARGS, **changes})


@needs_build
def test_int4_gemv_binding_does_nothing_for_empty_tensors(ext):
    ext.int4_gemv(**{**GEMV_ARGS, "m": 0, "x": 0, "qweight": 0, "scales": 0, "out": 0})
    ext.int4_gemv(**{**GEMV_ARGS, "n": 0, "x": 0, "qweight": 0, "scales": 0, "out": 0})


DECODE_ARGS = {"q": 256, "k_cache": 256, "v_cache": 256, "block_tables": 256, "seq_lens": 256, "out": 256,
               "part_out": 0, "part_lse": 0, "batch": 2, "q_heads": 32, "num_kv_heads": 8, "head_dim": 128,
               "num_blocks": 10, "block_size": 16, "num_splits": 1, "stride_q_b": 4096, "stride_q_h": 128,
               "stride_out_b": 4096, "stride_out_h": 128, "stride_table_b": 5, "qk_scale": 0.1, "v_scale": 1.0,
               "q_dtype": 1, "cache_dtype": 1, "device": 0, "stream": 0}


@needs_build
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"head_dim": 96}, "head_dim must be 64, 128 or 256"),
        ({"block_size": 12}, "block_size must be a power of two"),
        ({"block_size": 512}, "block_size must be a power of two"),
        ({"num_kv_heads": 5}, "not a multiple of Hkv"),
        ({"num_kv_heads": 0}, "Hkv > 0"),
        ({"num_splits": 65}, "num_splits"),
        ({"num_splits": 0}, "num_splits"),
        ({"num_splits": 4}, "part_out and part_lse"),
        ({"cache_dtype": 2}, "q's dtype or be float8_e4m3fn"),
        ({"q_dtype": 0, "cache_dtype": 0}, "float32 caches"),
        ({"q_dtype": 3, "cache_dtype": 3}, "unknown dtype code 3"),
        ({"q_dtype": 9}, "unknown dtype code 9"),
        ({"k_cache": 0}, "non-null"),
        ({"v_cache": 264}, "16-byte aligned"),
    ],
)
def test_paged_decode_binding_rejects_bad_arguments_before_touching_the_device(ext, changes, message):
    with pytest.raises(ValueError, match=message):
        ext.paged_decode_attention(**{**DECODE_ARGS, **changes})


@needs_build
def test_paged_decode_binding_accepts_fp8_caches_and_does_nothing_for_an_empty_batch(ext):
    assert ext.DTYPE_FLOAT8_E4M3 == 3
    assert ext.INT4_GEMV_MAX_M == cuda.INT4_GEMV_MAX_M
    assert ext.PAGED_DECODE_MAX_SPLITS == cuda.PAGED_DECODE_MAX_SPLITS
    ext.paged_decode_attention(**{**DECODE_ARGS, "batch": 0, "cache_dtype": ext.DTYPE_FLOAT8_E4M3})


# ------------------------------------------ the kernels' conversion helpers, on the host


@pytest.fixture(scope="module")
def host_checks(tmp_path_factory):
    """tests/csrc/host_checks.cu built with the csrc headers: runs the kernels' int4, fp8,
    bf16 and fp16 conversion helpers on the CPU."""
    exe = tmp_path_factory.mktemp("host_checks") / "host_checks"
    build = subprocess.run([NVCC, "-std=c++17", f"-I{REPO / 'csrc' / 'include'}",
                            str(REPO / "tests" / "csrc" / "host_checks.cu"), "-o", str(exe)],
                           capture_output=True, text=True, check=False)
    assert build.returncode == 0, build.stdout + build.stderr

    def run(*args: str) -> torch.Tensor:
        done = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True)
        bits = [int(word, 16) for word in done.stdout.split()]
        return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)

    return run


def assert_same_floats(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert_bitwise_equal(actual, expected.float(), "host helper")


@needs_build
def test_int4_nibble_trick_gives_every_nibble_in_k_order(host_checks):
    gen = torch.Generator().manual_seed(3)
    words = torch.randint(0, 2**32, (64,), generator=gen, dtype=torch.int64)
    words[:2] = torch.tensor([0x76543210, 0xFEDCBA98])
    got = host_checks("int4", *[arg for w in words.tolist() for arg in (f"{w:08x}", "1", "0")]).view(-1, 8)
    nibbles = (words[:, None] >> (4 * torch.arange(8))) & 0xF
    assert_same_floats(got, nibbles)


@needs_build
def test_int4_dequantization_matches_the_float64_formula(host_checks):
    gen = torch.Generator().manual_seed(4)
    words = torch.randint(0, 2**32, (64,), generator=gen, dtype=torch.int64)
    scales = (torch.randn(64, generator=gen) * 0.01).float()
    zeros = (torch.rand(64, generator=gen) * 15).float()
    args = [a for w, s, z in zip(words.tolist(), scales.tolist(), zeros.tolist()) for a in (f"{w:08x}", repr(s), repr(z))]
    got = host_checks("int4", *args).view(-1, 8).double()
    q = ((words[:, None] >> (4 * torch.arange(8))) & 0xF).double()
    expected = (q - zeros.double()[:, None]) * scales.double()[:, None]
    # fma(q, s, -z*s): two fp32 roundings of terms no larger than 15 |s|.
    bound = 4 * torch.finfo(torch.float32).eps * 15 * scales.double().abs()[:, None]
    assert bool(((got - expected).abs() <= bound).all()), (got - expected).abs().max()


@needs_build
def test_fp8_widening_matches_torch_for_every_byte(host_checks):
    got = host_checks("fp8")
    expected = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(torch.float8_e4m3fn).float()
    nan = expected.isnan()
    # 0x7F and 0xFF (NaN in torch) read as +-480: the conversion does not spend operations on them.
    assert nan.sum() == 2 and got[nan].tolist() == [480.0, -480.0]
    assert_same_floats(got[~nan], expected[~nan])  # every other byte bit for bit, subnormals and -0 included


@needs_build
@pytest.mark.parametrize("mode, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_16_bit_widening_matches_torch(host_checks, mode, dtype):
    patterns = list(range(0, 2**16, 97)) + [0x0000, 0x8000, 0x0001, 0x7F7F, 0xFFFF, 0x7C00, 0x7F80]
    got = host_checks(mode, *[f"{p:04x}" for p in patterns])
    expected = torch.tensor(patterns, dtype=torch.int32).to(torch.int16).view(dtype).float()
    assert_same_floats(got, expected)


# ---------------------------------------------------------------- on a GPU

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SHAPES = [(k, gs) for k in (96, 384, 4096) for gs in (32, 64, 128, -1) if gs == -1 or k % gs == 0]
ROWS = (1, 13, 515)


def make_int4_weight(n, k, group_size, scale_dtype, has_zeros, has_perm, seed=0):
    """Random packed weight in fastcot's layout, on the CPU."""
    gen = torch.Generator().manual_seed(seed + 7919 * n + k)
    groups = 1 if group_size == -1 else k // group_size
    qweight = torch.randint(-(2**31), 2**31, (n, k // 8), generator=gen, dtype=torch.int64).to(torch.int32)
    signs = torch.randint(0, 2, (groups, n), generator=gen) * 2 - 1
    scales = ((torch.rand(groups, n, generator=gen) * 0.05 + 1e-3) * signs).to(scale_dtype)
    zeros = (torch.rand(groups, n, generator=gen) * 15).to(scale_dtype) if has_zeros else None
    perm = torch.randperm(k, generator=gen).to(torch.int32) if has_perm else None
    return qweight, scales, zeros, perm


def to_device(tensors, device):
    return [t.to(device) if t is not None else None for t in tensors]


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    actual = actual.cpu()
    same = (actual == expected) | (actual.isnan() & expected.isnan())
    if bool(same.all()):
        return
    bad = (~same).nonzero()
    first = tuple(bad[0].tolist())
    raise AssertionError(
        f"{what}: {bad.shape[0]} of {actual.numel()} elements differ; first at {first}: "
        f"got {actual[first].item()}, expected {expected[first].item()}; "
        f"NaN in result: {int(actual.isnan().sum())}, in reference: {int(expected.isnan().sum())}"
    )


def run_and_compare(n, k, group_size, out_dtype, scale_dtype, has_zeros, has_perm, make_out=None):
    cpu = make_int4_weight(n, k, group_size, scale_dtype, has_zeros, has_perm)
    expected = reference.int4_dequantize(*cpu, group_size, out_dtype)
    qweight, scales, zeros, perm = to_device(cpu, "cuda")
    out = make_out(n, k, out_dtype) if make_out else torch.full((n, k), float("nan"), dtype=out_dtype, device="cuda")
    cuda.int4_dequantize(qweight, scales, zeros, perm, group_size, out)
    torch.cuda.synchronize()
    what = f"N={n} K={k} gs={group_size} out={out_dtype} scales={scale_dtype} zeros={has_zeros} perm={has_perm}"
    assert_bitwise_equal(out, expected, what)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("k, group_size", SHAPES)
@pytest.mark.parametrize("has_zeros", [False, True], ids=["sym", "zeros"])
@pytest.mark.parametrize("has_perm", [False, True], ids=["noperm", "perm"])
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale_dtype", DTYPES, ids=str)
def test_int4_dequantize_matches_reference(k, group_size, has_zeros, has_perm, out_dtype, scale_dtype):
    for n in ROWS:
        run_and_compare(n, k, group_size, out_dtype, scale_dtype, has_zeros, has_perm)


@pytest.mark.gpu
@needs_cuda_backend
@pytest.mark.parametrize("out_dtype", DTYPES, ids=str)
def test_int4_dequantize_into_a_misaligned_output(out_dtype):
    def misaligned(n, k, dtype):
        # One element in: contiguous, but not 16-byte aligned, so the scalar store path runs.
        return torch.full((n * k + 1,), float("nan"), dtype=dtype, device="cuda")[1:].view(n, k)

    run_and_compare(13, 384, 128, out_dtype, torch.float16, True, False, make_out=misaligned)


@pytest.mark.gpu
@needs_cuda_backend
def test_int4_dequantize_covers_more_rows_than_one_grid_dimension():
    run_and_compare(65535 + 17, 8, -1, torch.float16, torch.float16, True, False)


@pytest.mark.gpu
@needs_cuda_backend
def test_int4_dequantize_runs_on_the_current_stream_and_in_cuda_graphs():
    n, k, gs = 37, 384, 64
    cpu = make_int4_weight(n, k, gs, torch.bfloat16, True, True)
    qweight, scales, zeros, perm = to_device(cpu, "cuda")
    out = torch.full((n, k), float("nan"), dtype=torch.bfloat16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cuda.int4_dequantize(qweight, scales, zeros, perm, gs, out)  # also warms up before capture
    side.synchronize()
    assert_bitwise_equal(out, reference.int4_dequantize(*cpu, gs, torch.bfloat16), "side stream")

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cuda.int4_dequantize(qweight, scales, zeros, perm, gs, out)
    new = make_int4_weight(n, k, gs, torch.bfloat16, True, True, seed=1)
    for dst, src in zip((qweight, scales, zeros, perm), new):
        dst.copy_(src)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_bitwise_equal(out, reference.int4_dequantize(*new, gs, torch.bfloat16), "graph replay")


@pytest.mark.gpu
@needs_cuda_backend
def test_int4_dequantize_rejects_layouts_it_cannot_read():
    qweight, scales, zeros, perm = to_device(make_int4_weight(16, 96, 32, torch.float16, True, True), "cuda")
    out = torch.empty(16, 96, dtype=torch.float16, device="cuda")
    with pytest.raises(ValueError, match="qweight: expected a contiguous"):
        cuda.int4_dequantize(qweight.t().contiguous().t(), scales, zeros, perm, 32, out)
    with pytest.raises(TypeError, match="perm: expected dtype torch.int32"):
        cuda.int4_dequantize(qweight, scales, zeros, perm.long(), 32, out)
    with pytest.raises(ValueError, match="scales: expected shape"):
        cuda.int4_dequantize(qweight, scales, zeros, perm, 48, out)
    with pytest.raises(TypeError, match="out: expected float32, float16 or bfloat16"):
        cuda.int4_dequantize(qweight, scales, zeros, perm, 32, out.to(torch.int16))

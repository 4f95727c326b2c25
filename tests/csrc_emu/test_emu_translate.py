"""tools/simt/translate.py: the three CUDA constructs g++ cannot read (or run), rewritten with every line
kept in place (compiler messages and the emulator's reports point into the real sources)."""

from __future__ import annotations

import pytest
from simt_emu import translate


def body(src: str) -> str:
    out = translate.translate(src, "k.cu")
    first, rest = out.split("\n", 1)
    assert first == '#line 1 "k.cu"'
    assert rest.count("\n") == src.count("\n"), "line numbers moved"
    return rest


@pytest.mark.parametrize("launch, kernel, config", [
    ("k<<<grid, 128>>>(a, b);", "k", "grid, 128"),
    ("ns::k<T, 4><<<g, b, 0, stream>>>(args);", "ns::k<T, 4>", "g, b, 0, stream"),
    ("kern<<<dim3(x, y), dim3(32, 4), smem>>>();", "kern", "dim3(x, y), dim3(32, 4), smem"),
    ("(*table[i])<<<1, 32>>>(p);", "(*table[i])", "1, 32"),
])
def test_launches_become_simt_launch_calls(launch, kernel, config):
    out = body(f"void f() {{\n  {launch}\n}}\n")
    escaped = kernel.replace('"', '\\"')
    assert f'::simt::launch(SIMT_LAUNCH_SITE("{escaped}"), {kernel}, {config})(' in out
    assert "<<<" not in out and ">>>" not in out


@pytest.mark.parametrize("call", ["cudaLaunchKernelEx(&config, kern<T>, args)",
                                  ":: cudaLaunchKernelEx(\n      &config, kern<T>, args)"])
def test_launch_kernel_ex_becomes_a_simt_launch_ex_call(call):
    out = body(f"cudaError_t f() {{\n  return {call};\n  int after;\n}}\n")
    assert '::simt::launch_ex(SIMT_LAUNCH_SITE("cudaLaunchKernelEx"), ' in out
    assert "cudaLaunchKernelEx(" not in out.replace('"cudaLaunchKernelEx"', "")
    assert out.splitlines()[-2] == "  int after;"
    assert "cudaLaunchKernelExC(" in body("void f() { cudaLaunchKernelExC(&config, fn, args); }\n")


def test_a_launch_spread_over_lines_keeps_the_lines_after_it():
    src = "void f() {\n  k<T><<<grid,\n        threads, 0,\n        stream>>>(\n      args);\n  int after;\n}\n"
    out = body(src)
    assert out.splitlines()[5] == "  int after;"


def test_comments_and_strings_are_left_alone():
    src = ('// k<<<1, 2>>>(x); __shared__ float a[2];\n'
           'const char* s = "k<<<1, 2>>>(x) __shared__ int b;";\n'
           "/* __launch_bounds__(64) */\n")
    assert body(src) == src


def test_static_shared_variables_become_references_into_the_block_arena():
    out = body("__global__ void k() {\n  __shared__ float partial[kWarps][M][4];\n}\n")
    assert "using simt_shared_type_partial = float [kWarps][M][4];" in out
    assert "simt_shared_type_partial& partial = ::simt::static_shared<simt_shared_type_partial, alignof(float)>(" \
           "&simt_shared_key_partial, \"partial\");" in out


def test_shared_scalars_of_dependent_type_and_alignment():
    out = body("template <class T> __global__ void k() {\n  __shared__ __align__(16) typename T::Storage st;\n}\n")
    assert "using simt_shared_type_st = typename T::Storage ;" in out
    assert "(alignof(typename T::Storage) > (16) ? alignof(typename T::Storage) : (16))" in out


def test_extern_shared_is_the_dynamic_shared_memory():
    out = body("__global__ void k() {\n  extern __shared__ __align__(16) char smem[];\n  use(smem);\n}\n")
    assert "char* const smem = ::simt::dynamic_shared<char, (alignof(char) > (16) ? alignof(char) : (16))>();" in out


@pytest.mark.parametrize("src, message", [
    ("__shared__ float tile[32];\n", "declare __shared__ variables inside the kernel"),
    ("namespace a {\n__shared__ float tile[32];\n}\n", "declare __shared__ variables inside the kernel"),
    ("void k() {\n  __shared__ float a[2], b[2];\n}\n", "one __shared__ variable per declaration"),
    ("void k() {\n  extern __shared__ float d[4];\n}\n", "extern __shared__ must be an array of unknown size"),
    ("void k() {\n  __shared__ float d[];\n}\n", "needs a size"),
    ("void f() {\n  k<<<1>>>(x);\n}\n", "2 to 4 configuration values"),
])
def test_what_cannot_be_translated_is_refused_with_file_and_line(src, message):
    with pytest.raises(translate.TranslateError, match=message) as caught:
        translate.translate(src, "k.cu")
    assert str(caught.value).startswith("k.cu:")


def test_launch_bounds_move_into_the_kernel_body():
    out = body("__global__ void __launch_bounds__(kThreads, blocks<G>())\n    kern(const Args a) {\n  x();\n}\n")
    assert "__launch_bounds__" not in out
    assert "kern(const Args a) { ::simt::check_launch_bounds(kThreads);" in out


def test_launch_bounds_on_a_declaration_are_dropped():
    out = body("__global__ void __launch_bounds__(256) kern(int n);\n")
    assert out == "__global__ void  kern(int n);\n"

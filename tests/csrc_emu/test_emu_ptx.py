"""Inline PTX in csrc/ must sit behind one `__forceinline__` helper each, with the asm under
`#if defined(__CUDA_ARCH__)` and a portable fallback under `#else`: the GPU build takes the asm,
the emulator (g++, no __CUDA_ARCH__) the fallback. docs/emulator.md has the recipe, including
the GPU test that compares a helper's two paths bit for bit.

Every inline PTX statement in csrc must sit in such a helper; this guard keeps it so.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from simt_emu import translate

CSRC = Path(__file__).resolve().parents[2] / "csrc"
ASM = re.compile(r"\b(asm|__asm__)\b")


def _frames(lines: list[str]) -> list[dict]:
    """Preprocessor #if blocks: their condition and the lines of their #else and #endif."""
    frames, stack = [], []
    for i, line in enumerate(lines):
        directive = re.match(r"\s*#\s*(if|ifdef|ifndef|elif|else|endif)\b(.*)", line)
        if not directive:
            continue
        kind, rest = directive.groups()
        if kind in ("if", "ifdef", "ifndef"):
            stack.append({"cond": f"{kind} {rest}", "start": i, "else": None, "end": None})
        elif kind in ("elif", "else") and stack:
            stack[-1]["else"] = stack[-1]["else"] if stack[-1]["else"] is not None else i
        elif kind == "endif" and stack:
            frame = stack.pop()
            frame["end"] = i
            frames.append(frame)
    return frames


def unguarded_asm(source: str, path: str) -> list[str]:
    """Every asm statement of `source` that is not in the device branch of a __CUDA_ARCH__ #if
    with an #else fallback, inside a __forceinline__ function."""
    code = translate._mask(source)  # comments and strings out of the way
    lines = code.splitlines()
    frames = _frames(lines)
    problems = []
    for m in ASM.finditer(code):
        line = code.count("\n", 0, m.start())
        guard = [f for f in frames if "__CUDA_ARCH__" in f["cond"] and not f["cond"].startswith("ifndef")
                 and f["start"] < line < (f["else"] if f["else"] is not None else f["end"])]
        where = f"{path}:{line + 1}"
        if not guard:
            problems.append(f"{where}: asm outside an #if defined(__CUDA_ARCH__) branch")
        elif all(f["else"] is None for f in guard):
            problems.append(f"{where}: asm without an #else fallback for the host and the emulator")
        function_start = max(code.rfind("}", 0, m.start()), code.rfind(";\n\n", 0, m.start()))
        if "__forceinline__" not in code[function_start + 1 : m.start()]:
            problems.append(f"{where}: asm outside a __forceinline__ helper")
    return problems


def test_csrc_inline_ptx_is_only_in_guarded_helpers():
    sources = [p for p in CSRC.rglob("*") if p.suffix in (".cu", ".cuh", ".h", ".cpp")]
    assert sources, f"no sources under {CSRC}"
    problems = [p for src in sources for p in unguarded_asm(src.read_text(), str(src.relative_to(CSRC.parent)))]
    assert not problems, "\n".join(problems)


GUARDED = """
__device__ __forceinline__ uint32_t lop3_or_and(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  return (a & b) | c;  // asm in a comment is fine
#endif
}
"""


@pytest.mark.parametrize("source, problem", [
    (GUARDED, None),
    (GUARDED.replace("#else\n  return (a & b) | c;  // asm in a comment is fine\n", ""), "without an #else fallback"),
    ("__global__ void k(uint32_t* p) {\n  asm volatile(\"membar.gl;\");\n}\n", "outside an #if"),
    (GUARDED.replace("__forceinline__ ", ""), "outside a __forceinline__ helper"),
    ("#ifndef __CUDA_ARCH__\n__forceinline__ void f() { asm(\"x\"); }\n#else\n#endif\n", "outside an #if"),
])
def test_the_guard_tells_helpers_from_raw_asm(source, problem):
    found = unguarded_asm(source, "k.cuh")
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found

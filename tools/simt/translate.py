"""CUDA C++ source -> C++ that g++ compiles against tools/simt/simt.h.

Three constructs have no host C++ spelling (or none the emulator can run), and only these are
rewritten; everything else, kernels and launchers alike, reaches g++ as written:

- launches: ``kernel<T><<<grid, block, smem, stream>>>(args)`` becomes
  ``::simt::launch(SIMT_LAUNCH_SITE("kernel<T>"), kernel<T>, grid, block, smem, stream)(args)``,
  and ``cudaLaunchKernelEx(&config, kernel, args...)`` (whose host-mode definition passes the
  arguments as untyped pointers the emulator cannot call a kernel with) becomes
  ``::simt::launch_ex(SIMT_LAUNCH_SITE("cudaLaunchKernelEx"), &config, kernel, args...)``;
- ``__shared__`` declarations inside a function: ``__shared__ float s[4][32];`` becomes a
  reference into the running block's shared-memory arena (fresh and poisoned for every
  block), and ``extern __shared__ T s[];`` a pointer to the launch's dynamic shared memory;
- ``__launch_bounds__(max_threads, ...)`` is dropped from the signature and the kernel body
  starts with ``::simt::check_launch_bounds(max_threads)``, so a launch with more threads fails
  as it would on a GPU.

Line numbers are kept (a rewritten span keeps its newlines) and the output starts with a
``#line`` naming the original file, so compiler messages and the emulator's reports (which
carry ``std::source_location``) point into the real sources.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["TranslateError", "translate", "translate_file"]


class TranslateError(ValueError):
    """A construct the translator cannot rewrite; the message names file and line."""


def _mask(src: str) -> str:
    """`src` with comments and string/char literal contents replaced by spaces (newlines and
    quote characters kept), so that searches see code only and positions still line up."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out[i:j] = " " * (j - i)
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out[i:j] = [ch if ch == "\n" else " " for ch in src[i:j]]
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_"):
                i += 1  # a digit separator (1'000) or a suffix, not a char literal
                continue
            j = i + 1
            while j < n and src[j] != c and src[j] != "\n":
                j += 2 if src[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _line_of(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _match_close(code: str, pos: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes the one at `pos`."""
    depth = 0
    for i in range(pos, len(code)):
        if code[i] == open_:
            depth += 1
        elif code[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise TranslateError(f"unbalanced {open_!r}")


def _split_top(text: str) -> list[str]:
    """Split at commas outside (), [] and {}."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _same_lines(original: str, replacement: str) -> str:
    """`replacement` padded with the newlines of `original`, so later lines keep their numbers."""
    return replacement + "\n" * (original.count("\n") - replacement.count("\n"))


def _c_string(text: str) -> str:
    return '"' + " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---- launches ------------------------------------------------------------------------------

def _kernel_start(code: str, end: int) -> int:
    """Start of the kernel expression that ends at `end` (just before `<<<`): names, `::`,
    template argument lists, and balanced () or [] (`(*fn)`, `table[i]`)."""
    i = end
    while i > 0 and code[i - 1].isspace():
        i -= 1
    closers = {">": "<", ")": "(", "]": "["}
    while i > 0:
        c = code[i - 1]
        if c in closers:
            depth, j = 0, i - 1
            while j >= 0:
                if code[j] == c:
                    depth += 1
                elif code[j] == closers[c]:
                    depth -= 1
                    if depth == 0:
                        break
                j -= 1
            i = j
        elif c.isalnum() or c in "_:":
            i -= 1
        else:
            break
    return i


def _rewrite_launches(src: str, code: str, path: str, edits: list) -> None:
    for m in re.finditer(r"<<<", code):
        start = _kernel_start(code, m.start())
        kernel = src[start : m.start()].strip()
        close = code.find(">>>", m.end())
        if not kernel or close < 0:
            raise TranslateError(f"{path}:{_line_of(src, m.start())}: cannot parse this kernel launch")
        after = re.match(r"\s*\(", code[close + 3 :])
        if after is None:
            raise TranslateError(f"{path}:{_line_of(src, m.start())}: expected '(' after '>>>'")
        config = src[m.end() : close]
        if not 2 <= len(_split_top(code[m.end() : close])) <= 4:
            raise TranslateError(f"{path}:{_line_of(src, m.start())}: a launch takes 2 to 4 configuration values")
        paren = close + 3 + after.end()  # just past the argument list's '('
        original = src[start:paren]
        replacement = f"::simt::launch(SIMT_LAUNCH_SITE({_c_string(kernel)}), {kernel}, {config})("
        edits.append((start, paren, _same_lines(original, replacement)))


def _rewrite_launch_ex(src: str, code: str, path: str, edits: list) -> None:
    for m in re.finditer(r"(?:::\s*)?\bcudaLaunchKernelEx\s*\(", code):
        replacement = '::simt::launch_ex(SIMT_LAUNCH_SITE("cudaLaunchKernelEx"), '
        edits.append((m.start(), m.end(), _same_lines(src[m.start() : m.end()], replacement)))


# ---- __shared__ ----------------------------------------------------------------------------

_ALIGN = r"(?:__align__|alignas)\s*\(\s*([^()]*)\s*\)"
_SHARED = re.compile(
    r"(?P<extern>\bextern\s+)?(?P<pre>(?:(?:static|volatile)\s+|" + _ALIGN + r"\s*)*)"
    r"\b__shared__\b(?P<decl>[^;{}]*);"
)
_DECLARATOR = re.compile(r"^(?P<type>.*?[\w>*&\s])\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]*\]\s*)*)$", re.S)


def _function_scopes(code: str) -> list[tuple[int, int]]:
    """Spans of braces that are not namespace or `extern "C"` bodies (functions, classes)."""
    spans, stack = [], []
    for i, c in enumerate(code):
        if c == "{":
            head = code[max(code.rfind(c, 0, i) for c in ";{}") + 1 : i]
            is_namespace = re.search(r'(\bnamespace\b[\w\s:]*|\bextern\s*"\s*")\s*$', head) is not None
            stack.append((i, is_namespace))
        elif c == "}" and stack:
            start, is_namespace = stack.pop()
            if not is_namespace:
                spans.append((start, i))
    return spans


def _rewrite_shared(src: str, code: str, path: str, edits: list) -> None:
    scopes = _function_scopes(code)
    for m in _SHARED.finditer(code):
        where = f"{path}:{_line_of(src, m.start())}"
        if not any(a < m.start() < b for a, b in scopes):
            raise TranslateError(f"{where}: declare __shared__ variables inside the kernel (the emulator gives each "
                                 "block its own copy when the declaration runs)")
        decl = src[m.start("decl") : m.end("decl")]
        aligns = re.findall(_ALIGN, src[m.start("pre") : m.end("pre")] + " " + decl)
        decl = re.sub(_ALIGN, " ", decl)
        volatile = "volatile " if re.search(r"\bvolatile\b", src[m.start("pre") : m.end("pre")]) else ""
        if len(_split_top(decl.replace("<", "(").replace(">", ")"))) > 1:
            raise TranslateError(f"{where}: one __shared__ variable per declaration, please")
        parts = _DECLARATOR.match(decl.strip())
        if parts is None or "=" in decl:
            raise TranslateError(f"{where}: cannot read this __shared__ declaration: {decl.strip()!r}")
        type_, name, dims = volatile + parts["type"].strip(), parts["name"], "".join(parts["dims"].split())
        align = f"alignof({type_})" if not aligns else f"(alignof({type_}) > ({aligns[0]}) ? alignof({type_}) : ({aligns[0]}))"
        if m["extern"]:
            if dims != "[]":
                raise TranslateError(f"{where}: extern __shared__ must be an array of unknown size, like T name[]")
            replacement = f"{type_}* const {name} = ::simt::dynamic_shared<{type_}, {align}>();"
        else:
            if "[]" in dims:
                raise TranslateError(f"{where}: a static __shared__ array needs a size (or declare it extern)")
            alias = f"simt_shared_type_{name}"
            replacement = (f"using {alias} = {type_} {dims}; static char simt_shared_key_{name}; "
                           f"{alias}& {name} = ::simt::static_shared<{alias}, {align}>(&simt_shared_key_{name}, "
                           f'"{name}");')
        original = src[m.start() : m.end()]
        edits.append((m.start(), m.end(), _same_lines(original, replacement)))


# ---- __launch_bounds__ ---------------------------------------------------------------------

def _rewrite_launch_bounds(src: str, code: str, path: str, edits: list) -> None:
    for m in re.finditer(r"\b__launch_bounds__\s*\(", code):
        close = _match_close(code, m.end() - 1, "(", ")")
        max_threads = _split_top(src[m.end() : close - 1])[0]
        edits.append((m.start(), close, _same_lines(src[m.start() : close], "")))
        # The kernel's parameter list is the next (...) ; its body the '{' after it.
        params = code.find("(", close)
        if params < 0:
            raise TranslateError(f"{path}:{_line_of(src, m.start())}: no parameter list after __launch_bounds__")
        after = _match_close(code, params, "(", ")")
        body = re.match(r"\s*([{;])", code[after:])
        if body is None:
            raise TranslateError(f"{path}:{_line_of(src, m.start())}: expected the kernel body after its parameters")
        if body.group(1) == "{":
            brace = after + body.end()
            edits.append((brace, brace, f" ::simt::check_launch_bounds({max_threads});"))


def translate(src: str, path: str = "<source>") -> str:
    """The host C++ for CUDA source `src` (read from `path`, which the `#line` names)."""
    code = _mask(src)
    edits: list[tuple[int, int, str]] = []
    _rewrite_launches(src, code, path, edits)
    _rewrite_launch_ex(src, code, path, edits)
    _rewrite_shared(src, code, path, edits)
    _rewrite_launch_bounds(src, code, path, edits)
    edits.sort()
    out, pos = [f'#line 1 "{path}"\n'], 0
    for start, end, text in edits:
        if start < pos:
            raise TranslateError(f"{path}:{_line_of(src, start)}: overlapping constructs")
        out += [src[pos:start], text]
        pos = end
    out.append(src[pos:])
    return "".join(out)


def translate_file(source: Path, target: Path) -> None:
    """Translate `source` into `target` (its `#line` names the absolute source path)."""
    text = translate(source.read_text(), str(source.resolve()))
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)

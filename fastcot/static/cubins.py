"""Compiled kernels for a GPU that is not here: Triton kernels compiled ahead of time as their
launcher would launch them, csrc kernels compiled by nvcc as setup.py builds them (cached by
the sources' hash), and their SASS and resource usage from `cuobjdump`."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastcot.static import sass
from fastcot.static.cuobjdump import cuobjdump, find_cuobjdump, parse_resource_usage

# setup.py's device-code flags (tests/static checks that setup.py still uses them); the SASS
# targets are its default FASTCOT_CUDA_ARCHS "80;90a".
NVCC_FLAGS = ("-O3", "-std=c++17", "-DNDEBUG", "-lineinfo")
CUDA_ARCH = {80: "sm_80", 90: "sm_90a"}


class Unavailable(RuntimeError):
    """A kernel cannot be compiled or read here; the message says why."""


@dataclass
class Kernel:
    """One compiled kernel for one arch, ready to read."""

    name: str
    arch: int
    listing: str  # its `cuobjdump -sass` text
    registers: int
    stack: int
    shared: int  # static shared memory as cuobjdump lists it
    local: int
    dynamic_shared: int  # launch-time shared memory (Triton allocates it dynamically)
    origin: str

    @functools.cached_property
    def instructions(self) -> list[sass.Instruction]:
        functions = sass.parse(self.listing)
        if len(functions) != 1:
            raise Unavailable(f"{self.name}: expected one function in the listing, found {len(functions)}")
        return next(iter(functions.values()))


def _tool() -> Path:
    tool = find_cuobjdump()
    if tool is None:
        raise Unavailable("cuobjdump not found (neither triton's bundled copy nor a CUDA toolkit's)")
    return tool


def read(path: Path, arch: int, symbol: str | None = None, *, dynamic_shared: int = 0, origin: str = "",
         fatbin_arch: str | None = None) -> Kernel:
    """The kernel `symbol` (or the only one) of a cubin or of a fatbinary's `fatbin_arch` code."""
    tool = _tool()
    flags = (["-arch", fatbin_arch] if fatbin_arch else []) + (["-fun", symbol] if symbol else [])
    usage = [k for k in parse_resource_usage(cuobjdump(tool, path, "--dump-resource-usage", *flags), f"sm_{arch}")
             if symbol is None or k.name == symbol]
    if len(usage) != 1:
        raise Unavailable(f"{path}: no single kernel {symbol or ''} for sm_{arch} in cuobjdump's resource usage")
    u = usage[0]
    listing = cuobjdump(tool, path, "-sass", *flags)
    return Kernel(name=u.name, arch=arch, listing=listing, registers=u.registers, stack=u.stack, shared=u.shared,
                  local=u.local, dynamic_shared=dynamic_shared, origin=origin)


_TRITON: dict = {}


def triton_kernel(fn, kwargs: dict, arch: int) -> Kernel:
    """`fn[grid](**kwargs)` compiled for sm_`arch` (fastcot.kernels.aot), once per distinct
    specialization in this process."""
    import triton

    from fastcot.kernels.aot import launch_source

    src, target, options = launch_source(fn, kwargs, arch)
    key = (src.hash(), arch, repr(sorted(options.items())))
    if key not in _TRITON:
        _TRITON[key] = _compile_triton(src, target, options, arch, triton.__version__)
    found = _TRITON[key]
    if isinstance(found, Unavailable):
        raise found
    return found


def _compile_triton(src, target, options, arch: int, version: str) -> Kernel | Unavailable:
    import triton

    try:
        compiled = triton.compile(src, target=target, options=options)
    except Exception as exc:  # a compile error is a result of the report, not a crash of it
        lines = str(exc).strip().splitlines()
        return Unavailable(f"triton {version} cannot compile it for sm_{arch}: {lines[-1] if lines else type(exc).__name__}")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return read(Path(f.name), arch, dynamic_shared=int(compiled.metadata.shared),
                    origin=f"triton {version} AOT compile")


# --- csrc ------------------------------------------------------------------------------------


def csrc_dir() -> Path | None:
    """csrc/ of the checkout this fastcot runs from (an installed wheel has none)."""
    folder = Path(__file__).resolve().parents[2] / "csrc"
    return folder if (folder / "include" / "fastcot").is_dir() else None


def find_nvcc() -> Path | None:
    """nvcc as setup.py looks for it: $CUDA_HOME or $CUDA_PATH (only that one when set), else
    PATH, else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            nvcc = Path(os.environ[var]) / "bin" / "nvcc"
            return nvcc if nvcc.is_file() else None
    on_path = shutil.which("nvcc")
    if on_path:
        return Path(on_path)
    default = Path("/usr/local/cuda/bin/nvcc")
    return default if default.is_file() else None


@functools.cache
def nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"V(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def cache_dir() -> Path:
    root = os.environ.get("FASTCOT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fastcot")
    return Path(root) / "static"


def source_key(csrc: Path, source: str, nvcc: Path, arch: int) -> str:
    """Hash of everything the cubin depends on: the sources, flags, nvcc and target."""
    digest = hashlib.sha256()
    for path in sorted([csrc / source, *(csrc / "include").rglob("*")]):
        if path.is_file():
            digest.update(path.relative_to(csrc).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join([*NVCC_FLAGS, CUDA_ARCH[arch], nvcc_version(nvcc)]).encode())
    return digest.hexdigest()[:16]


def csrc_cubin(source: str, arch: int) -> Path:
    """csrc/`source` compiled to a cubin for `arch` by nvcc, from the cache when the sources,
    flags and nvcc are unchanged."""
    csrc, nvcc = csrc_dir(), find_nvcc()
    if csrc is None or nvcc is None:
        raise Unavailable("no csrc/ next to the package" if csrc is None else "no nvcc (CUDA_HOME, PATH, /usr/local/cuda)")
    out = cache_dir() / f"{Path(source).stem}-{CUDA_ARCH[arch]}-{source_key(csrc, source, nvcc, arch)}.cubin"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    code = CUDA_ARCH[arch]
    command = [str(nvcc), *NVCC_FLAGS, "-cubin", f"-gencode=arch=compute_{code[3:]},code={code}",
               f"-I{csrc / 'include'}", str(csrc / source), "-o", str(tmp)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(f"nvcc failed on {source} for {code}: {done.stderr.strip()[-400:]}")
    tmp.replace(out)
    return out


def prebuild(jobs: list[tuple[str, int]]) -> None:
    """Compile the (source, arch) cubins not cached yet, two at a time (errors surface later)."""
    if csrc_dir() is None or find_nvcc() is None:
        return
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda job: _try(csrc_cubin, *job), jobs))


def _try(fn, *args):
    try:
        return fn(*args)
    except Unavailable:
        return None


def extension_path() -> Path | None:
    built = sorted((Path(__file__).resolve().parents[1]).glob("_C.*.so"))
    return built[0] if built else None


@functools.cache
def cuda_kernel(source: str, symbol: str, arch: int) -> Kernel:
    """A csrc kernel: compiled from the checkout's sources when nvcc is here, else read from the
    built extension fastcot._C (which carries SASS for sm_80 and sm_90a)."""
    try:
        cubin = csrc_cubin(source, arch)
        return read(cubin, arch, symbol, origin=f"nvcc {nvcc_version(find_nvcc())} {CUDA_ARCH[arch]} cubin ({cubin.name})")
    except Unavailable as why_not:
        so = extension_path()
        if so is None:
            raise Unavailable(f"{why_not}; and no built extension fastcot/_C*.so") from None
        return read(so, arch, symbol, fatbin_arch=CUDA_ARCH[arch], origin=f"{so.name} ({CUDA_ARCH[arch]})")

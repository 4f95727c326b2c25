"""Build CUDA sources into a shared library that runs them on the CPU (the SIMT emulator).

`build_library` translates CUDA sources (translate.py), compiles them with g++ against the
CUDA toolkit's headers plus the emulator runtime (runtime.cpp & co), and links a shared
library. Objects and libraries are cached under ``build/simt/`` (``SIMT_BUILD_DIR``) keyed by a
hash of everything that goes into them (sources, headers, flags, compiler), so an unchanged
tree costs nothing and one changed kernel rebuilds one object. Concurrent builds wait on a
file lock.

Variants: ``plain`` (-O1) and ``asan`` (AddressSanitizer + misaligned-access checks; load it
only in a process started with libasan preloaded, see `asan_environment`).
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import translate

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RUNTIME_SOURCES = tuple(HERE / n for n in ("runtime.cpp", "collectives.cpp", "launch.cpp", "cuda_api.cpp", "fiber.cpp"))
RUNTIME_HEADERS = tuple(HERE / n for n in ("simt.h", "simt_intrinsics.h", "runtime.h", "fiber.h"))
CUDA_SUFFIXES = (".cu", ".cuh", ".h", ".hpp")
REQUIRED_HEADERS = ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h", "cuda_fp8.h", "crt/host_defines.h")
MIN_GCC = 12

COMMON_FLAGS = (
    "-std=c++20", "-fPIC", "-pthread",
    "-ffp-contract=off",      # no a*b+c -> fma the source did not ask for (nvcc's choices differ anyway)
    "-fno-strict-aliasing",   # kernels reinterpret memory (uint4 loads of half rows) as CUDA allows
    "-Wno-unknown-pragmas",   # #pragma unroll
)
# -O1 and line tables only (-g1): the builds are part of every cold test run, and a pass over
# the kernel cases costs about as much at -O1 as at -O2.
VARIANT_FLAGS = {
    "plain": ("-O1",),
    "asan": ("-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address",
             "-fsanitize=alignment", "-fno-sanitize-recover=alignment"),
}


class EmulatorUnavailable(RuntimeError):
    """No g++ >= 12 or no CUDA headers here; the message says which and where it looked."""


class BuildError(RuntimeError):
    """The compiler or linker failed; the message holds its output."""


@dataclass(frozen=True)
class Toolchain:
    cxx: str
    version: str
    cuda_includes: tuple[Path, ...]


def _has_headers(dirs: list[Path]) -> bool:
    return all(any((d / h).is_file() for d in dirs) for h in REQUIRED_HEADERS)


def cuda_include_dirs() -> list[Path]:
    """Where the CUDA headers are: $SIMT_CUDA_INCLUDE, $CUDA_HOME, $CUDA_PATH, nvcc's toolkit,
    /usr/local/cuda, then NVIDIA's header wheels (nvidia/*/include in site-packages)."""
    candidates = []
    if os.environ.get("SIMT_CUDA_INCLUDE"):
        candidates.append(Path(os.environ["SIMT_CUDA_INCLUDE"]))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for d in candidates:
        if _has_headers([d]):
            return [d]
    wheels = sorted({p for entry in sys.path if entry for p in Path(entry).glob("nvidia/*/include")})
    if wheels and _has_headers(wheels):
        return wheels
    raise EmulatorUnavailable(
        "no CUDA headers (looked in $SIMT_CUDA_INCLUDE, $CUDA_HOME, $CUDA_PATH, nvcc's toolkit, /usr/local/cuda and "
        f"nvidia/*/include in site-packages for {', '.join(REQUIRED_HEADERS)})"
    )


@functools.cache
def toolchain() -> Toolchain:
    """The compiler and headers the emulator builds with, or EmulatorUnavailable saying why not."""
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise EmulatorUnavailable(f"no C++ compiler: {cxx!r} is not on PATH (set CXX to a g++ >= {MIN_GCC})")
    done = subprocess.run([path, "-dumpfullversion"], capture_output=True, text=True, check=False)
    match = re.match(r"(\d+)", done.stdout.strip())
    probe = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    if not match or "clang" in probe.lower() or int(match.group(1)) < MIN_GCC:
        raise EmulatorUnavailable(f"{path} is not g++ >= {MIN_GCC} (it says {done.stdout.strip() or probe[:60]!r})")
    return Toolchain(path, probe.splitlines()[0], tuple(cuda_include_dirs()))


def cache_dir() -> Path:
    return Path(os.environ.get("SIMT_BUILD_DIR", REPO / "build" / "simt"))


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _translate_tree(root: Path, out: Path) -> Path:
    """Every CUDA file under `root`, translated into out/<hash>/ with the same relative paths."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in CUDA_SUFFIXES)
    texts = {p.relative_to(root): translate.translate(p.read_text(), str(p.resolve())) for p in files}
    key = _digest(str(root.resolve()), *(f"{rel}\n{text}" for rel, text in texts.items()))
    tree = out / f"{root.name}-{key}"
    if not tree.is_dir():
        staging = out / f".{tree.name}.{os.getpid()}"
        for rel, text in texts.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_text(text)
        staging.rename(tree)
    return tree


def _compile(tc: Toolchain, source: Path, includes: list[Path], flags: tuple[str, ...], obj: Path) -> None:
    tmp = obj.with_name(f".{obj.name}.{os.getpid()}")
    cmd = [tc.cxx, *COMMON_FLAGS, *flags, "-include", str(HERE / "simt.h"), f"-I{HERE}",
           *(f"-I{d}" for d in includes), *(f"-isystem{d}" for d in tc.cuda_includes),
           "-x", "c++", "-c", str(source), "-o", str(tmp)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"compiling {source} failed:\n{' '.join(cmd)}\n" + "\n".join(done.stderr.splitlines()[-80:]))
    tmp.rename(obj)


def build_library(name: str, *, cuda_root: Path, cuda_units: list[Path], host_units: list[Path] = (),
                  variant: str = "plain", jobs: int | None = None) -> Path:
    """Shared library `name` for `variant` from the runtime, the CUDA translation units
    `cuda_units` (files under `cuda_root`, translated with every header there) and the host
    C++ `host_units` (compiled as written, with the translated tree on the include path).
    Returns its path; rebuilds only what changed."""
    if variant not in VARIANT_FLAGS:
        raise ValueError(f"variant: expected one of {sorted(VARIANT_FLAGS)}, got {variant!r}")
    tc = toolchain()
    flags = VARIANT_FLAGS[variant]
    base = cache_dir()
    for sub in ("gen", "obj", "lib"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        tree = _translate_tree(cuda_root, base / "gen")
        include = tree / "include" if (tree / "include").is_dir() else tree
        # An object's key: compiler, flags, its source and every header it may include.
        setup = _digest(tc.cxx, tc.version, *map(str, tc.cuda_includes), *COMMON_FLAGS, *flags,
                        *(p.read_bytes() for p in RUNTIME_HEADERS))
        kernel_setup = _digest(setup, *(p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file() and p.suffix != ".cu"))
        units = {tree / u.relative_to(cuda_root): kernel_setup for u in cuda_units}
        units.update({u: setup for u in RUNTIME_SOURCES})
        units.update({u: kernel_setup for u in host_units})
        objects = {u: base / "obj" / f"{u.stem}-{variant}-{_digest(key, u.read_bytes())}.o" for u, key in units.items()}
        missing = [u for u, o in objects.items() if not o.exists()]
        workers = max(1, min(len(missing) or 1, jobs or int(os.environ.get("SIMT_JOBS", 0)) or os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(_compile, tc, u, [include], flags, objects[u]) for u in missing]:
                f.result()
        lib = base / "lib" / f"{name}-{variant}-{_digest(*(o.name for o in objects.values()))}.so"
        if not lib.exists():
            tmp = lib.with_name(f".{lib.name}.{os.getpid()}")
            sanitize = [f for f in flags if f.startswith("-fsanitize")]
            # -Bsymbolic: the launchers' cudaGetLastError & co. must be this library's even when a
            # real libcudart was loaded globally before it (torch's CUDA builds do that).
            cmd = [tc.cxx, "-shared", "-pthread", *sanitize, "-o", str(tmp), *map(str, objects.values()),
                   "-Wl,--no-undefined", "-Wl,-Bsymbolic", "-ldl"]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise BuildError(f"linking {name} failed:\n{' '.join(cmd)}\n{done.stderr[-6000:]}")
            tmp.rename(lib)
            lib.with_suffix(".objs").write_text("".join(f"{o.name}\n" for o in objects.values()))
            _prune(base, keep=lib, prefix=f"{name}-{variant}-", tree=tree)
        return lib


def _prune(base: Path, keep: Path, prefix: str, tree: Path) -> None:
    """Drop older builds of the same library, objects no library lists, and stale trees."""
    for old in (base / "lib").glob(f"{prefix}*.so"):
        if old != keep:
            old.unlink(missing_ok=True)
            old.with_suffix(".objs").unlink(missing_ok=True)
    listed = {line for m in (base / "lib").glob("*.objs") for line in m.read_text().split()}
    for obj in (base / "obj").glob("*.o"):
        if obj.name not in listed:
            obj.unlink(missing_ok=True)
    for old in (base / "gen").glob(f"{tree.name.rsplit('-', 1)[0]}-*"):
        if old != tree:
            shutil.rmtree(old, ignore_errors=True)


def libasan() -> Path:
    """The AddressSanitizer runtime g++ links against (to preload into an ASan process)."""
    out = subprocess.run([toolchain().cxx, "-print-file-name=libasan.so"], capture_output=True, text=True,
                         check=True).stdout.strip()
    return Path(out).resolve()


def asan_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process that loads ``asan`` builds: libasan preloaded first;
    leak checks off (the interpreter leaks by design); the shadow gap left unprotected and no
    GPU visible, so a CUDA build of torch imports under ASan too."""
    env = dict(os.environ if env is None else env)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(libasan()), env.get("LD_PRELOAD", "")]))
    options = ["detect_leaks=0", "abort_on_error=0", "protect_shadow_gap=0", env.get("ASAN_OPTIONS", "")]
    env["ASAN_OPTIONS"] = ":".join(filter(None, options))
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env

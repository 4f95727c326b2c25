"""Builds fastcot's optional CUDA extension ``fastcot._C``.

Package metadata lives in pyproject.toml; this file only adds the extension.
It is compiled by nvcc and the host compiler through ninja, with pybind11 and
a statically linked CUDA runtime, and never imports torch, so pip's build
isolation works and one build serves every torch version.

Environment:
  FASTCOT_BUILD_CUDA   auto (default): build when a CUDA toolkit is found; if
                       that fails, say why and install without the extension.
                       1: a missing toolkit or a failed build is fatal (CI).
                       0: never build, and drop a previously built extension.
  FASTCOT_CUDA_ARCHS   SASS targets, default "80;90a". PTX for the newest one
                       (without its a/f suffix) is embedded for newer GPUs.
  FASTCOT_CUDA_PTX     0 leaves that PTX out.
  CUDA_HOME, CUDA_PATH toolkit root; when set it is the only one tried. Else
                       nvcc on PATH, else /usr/local/cuda.
  MAX_JOBS             ninja's parallelism.
  CXX                  host compiler (default c++), also given to nvcc.

The full compiler output, ptxas register and spill counts included, is kept
in the build folder and next to the extension as fastcot/_C.ptxas.log.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
EXT_NAME = "fastcot._C"
SOURCES = ["csrc/bindings.cpp", "csrc/int4_dequant.cu", "csrc/int4_gemv.cu", "csrc/paged_decode.cu"]
HEADERS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "include").rglob("*.*h"))
DEFAULT_ARCHS = "80;90a"
LOG_NAME = "_C.ptxas.log"


class CudaBuildError(RuntimeError):
    """The toolkit is missing or the compile failed; fatal only when FASTCOT_BUILD_CUDA=1."""


@dataclass(frozen=True)
class Toolkit:
    home: Path
    nvcc: Path
    include_dir: Path
    lib_dir: Path


def build_mode() -> str:
    mode = os.environ.get("FASTCOT_BUILD_CUDA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"fastcot: FASTCOT_BUILD_CUDA must be auto, 1 or 0, got {mode!r}")
    return mode


def nvcc_reported_home(nvcc: Path) -> Path | None:
    # An nvcc on PATH may be a wrapper script (/usr/local/bin/nvcc exec-ing the
    # real one), so its grandparent is not the toolkit; nvcc knows its own TOP.
    try:
        dry = subprocess.run([str(nvcc), "--dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    return Path(match.group(1).strip()).resolve() if match else None


def toolkit_at(home: Path) -> Toolkit:
    nvcc = home / "bin" / "nvcc"
    if not nvcc.is_file():
        raise CudaBuildError(f"no bin/nvcc under {home}")
    includes = [home / "include", *sorted(home.glob("targets/*/include"))]
    libs = [home / "lib64", home / "lib", *sorted(home.glob("targets/*/lib"))]
    include_dir = next((d for d in includes if (d / "cuda_runtime_api.h").is_file()), None)
    lib_dir = next((d for d in libs if (d / "libcudart_static.a").is_file()), None)
    if include_dir is None or lib_dir is None:
        raise CudaBuildError(f"{home} lacks cuda_runtime_api.h or libcudart_static.a")
    return Toolkit(home=home, nvcc=nvcc, include_dir=include_dir, lib_dir=lib_dir)


def find_toolkit() -> Toolkit:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            # An explicit choice is never second-guessed by falling back elsewhere.
            try:
                return toolkit_at(Path(os.environ[var]))
            except CudaBuildError as err:
                raise CudaBuildError(f"{var}={os.environ[var]}: {err}") from None
    on_path = shutil.which("nvcc")
    if on_path:
        home = nvcc_reported_home(Path(on_path)) or Path(on_path).resolve().parent.parent
        return toolkit_at(home)
    if Path("/usr/local/cuda").is_dir():
        return toolkit_at(Path("/usr/local/cuda"))
    raise CudaBuildError("no CUDA toolkit found (CUDA_HOME, CUDA_PATH, nvcc on PATH, /usr/local/cuda)")


def parse_archs(text: str) -> list[str]:
    archs = []
    for item in re.split(r"[;,\s]+", text.strip()):
        if not item:
            continue
        arch = item.lower().replace(".", "").removeprefix("sm_")
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            raise SystemExit(f"fastcot: FASTCOT_CUDA_ARCHS entry {item!r} is not like 80, 9.0 or 90a")
        archs.append(arch)
    if not archs:
        raise SystemExit("fastcot: FASTCOT_CUDA_ARCHS is empty")
    return list(dict.fromkeys(archs))


def gencode_flags(archs: list[str], with_ptx: bool) -> tuple[list[str], str]:
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    ptx = ""
    if with_ptx:
        # PTX of an a/f variant only runs on that exact chip, so the forward
        # compatible PTX is the plain base of the newest arch.
        newest = max(archs, key=lambda a: int(re.match(r"\d+", a).group()))
        base = re.match(r"\d+", newest).group()
        ptx = f"compute_{base}"
        flags.append(f"-gencode=arch=compute_{base},code=compute_{base}")
    return flags, ptx


def nvcc_version(nvcc: Path) -> str:
    out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"V(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else "unknown"


def csrc_sha256(root: Path) -> str:
    # tests/test_csrc.py calls this to spot an extension older than csrc/.
    digest = hashlib.sha256()
    for path in sorted((root / "csrc").rglob("*")):
        if path.is_file() and path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_if_changed(path: Path, text: str) -> None:
    # Rewriting an unchanged file would make ninja rebuild everything behind it.
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_ninja() -> str:
    found = shutil.which("ninja")
    if found:
        return found
    try:
        import ninja  # the PyPI package, a build requirement

        return str(Path(ninja.BIN_DIR) / "ninja")
    except ImportError:
        raise CudaBuildError("ninja is not installed (pip install ninja)") from None


class NinjaCudaBuild:
    """Writes build.ninja for fastcot._C in `build_dir` and runs it."""

    def __init__(self, toolkit: Toolkit, build_dir: Path, output: Path):
        self.toolkit = toolkit
        self.build_dir = build_dir
        self.output = output
        self.archs = parse_archs(os.environ.get("FASTCOT_CUDA_ARCHS", DEFAULT_ARCHS))
        with_ptx = os.environ.get("FASTCOT_CUDA_PTX", "1").strip() != "0"
        self.gencode, self.ptx = gencode_flags(self.archs, with_ptx)
        self.cxx = os.environ.get("CXX", "c++")

    def run(self) -> Path:
        self.build_dir.mkdir(parents=True, exist_ok=True)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._write_build_info()
        # Only the module's init function is exported; nothing in the static
        # runtime or libstdc++ instantiations can clash with other modules.
        write_if_changed(self.build_dir / "exports.map", "{ global: PyInit__C; local: *; };\n")
        objects = [self._object_for(src) for src in SOURCES]
        (self.build_dir / "build.ninja").write_text(self._ninja_file(objects))
        self._run_ninja()
        return self._collect_log(objects)

    def _object_for(self, source: str) -> Path:
        return self.build_dir / (Path(source).name + ".o")

    def _write_build_info(self) -> None:
        generated = self.build_dir / "generated"
        generated.mkdir(exist_ok=True)
        defines = {
            "FASTCOT_BUILD_ARCHS": ";".join(f"sm_{a}" for a in self.archs),
            "FASTCOT_BUILD_PTX": self.ptx,
            "FASTCOT_NVCC_VERSION": nvcc_version(self.toolkit.nvcc),
            "FASTCOT_SOURCE_SHA256": csrc_sha256(ROOT),
        }
        text = "// Generated by setup.py; do not edit.\n#pragma once\n"
        text += "".join(f"#define {name} {c_string(value)}\n" for name, value in defines.items())
        write_if_changed(generated / "fastcot_build_info.h", text)

    def _ninja_file(self, objects: list[Path]) -> str:
        import pybind11  # a build requirement; imported here so FASTCOT_BUILD_CUDA=0 needs none

        includes = [
            ROOT / "csrc" / "include",
            self.build_dir / "generated",
            Path(pybind11.get_include()),
            Path(sysconfig.get_paths()["include"]),
            self.toolkit.include_dir,
        ]
        include_flags = " ".join(f"-I{shlex.quote(str(d))}" for d in includes)
        # Both halves of the module must come from the same host compiler.
        ccbin = f"-ccbin {shlex.quote(shlex.split(self.cxx)[0])}" if "CXX" in os.environ else ""
        cuflags = [
            "-O3 -std=c++17 -DNDEBUG -lineinfo",
            "-Xcompiler=-fPIC,-fvisibility=hidden",
            # -v prints registers, stack and spills per kernel and arch into the log.
            "-Xptxas=-v",
            *self.gencode,
            ccbin,
            include_flags,
        ]
        cflags = f"-O3 -std=c++17 -DNDEBUG -fPIC -fvisibility=hidden -Wall {include_flags}"
        # --exclude-libs binds the static runtime's cuda* calls inside this
        # module, never to the libcudart that torch loads globally.
        ldflags = (
            f"-shared -L{shlex.quote(str(self.toolkit.lib_dir))} -l:libcudart_static.a "
            "-ldl -lrt -lpthread -Wl,--exclude-libs,ALL "
            f"-Wl,--version-script={shlex.quote(str(self.build_dir / 'exports.map'))}"
        )
        # Each step keeps its full output (ptxas -v included) in $log: ninja
        # would only show it once, and not at all on a no-op rebuild.
        keep_log = "> $log 2>&1 || { cat $log; exit 1; }"
        lines = [
            f"nvcc = {shlex.quote(str(self.toolkit.nvcc))}",
            f"cxx = {self.cxx}",
            f"cuflags = {' '.join(f for f in cuflags if f)}",
            f"cflags = {cflags}",
            f"ldflags = {ldflags}",
            "rule nvcc",
            "  command = $nvcc --generate-dependencies-with-compile --dependency-output $out.d "
            f"$cuflags -c $in -o $out {keep_log}",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = nvcc $in",
            "rule cxx",
            f"  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out {keep_log}",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = c++ $in",
            "rule link",
            f"  command = $cxx $in $ldflags -o $out {keep_log}",
            "  description = link $out",
        ]
        for source, obj in zip(SOURCES, objects):
            rule = "nvcc" if source.endswith(".cu") else "cxx"
            lines.append(f"build {ninja_path(obj)}: {rule} {ninja_path(ROOT / source)}")
            lines.append(f"  log = {shlex.quote(str(log_of(obj)))}")
        lines.append(
            f"build {ninja_path(self.output)}: link {' '.join(ninja_path(o) for o in objects)}"
            f" | {ninja_path(self.build_dir / 'exports.map')}"
        )
        lines.append(f"  log = {shlex.quote(str(self.build_dir / 'link.log'))}")
        lines.append(f"default {ninja_path(self.output)}")
        return "\n".join(lines) + "\n"

    def _run_ninja(self) -> None:
        command = [find_ninja(), "-C", str(self.build_dir)]
        if os.environ.get("MAX_JOBS"):
            command += ["-j", os.environ["MAX_JOBS"]]
        print("fastcot: building fastcot._C:", " ".join(command), flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        (self.build_dir / "ninja-output.txt").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise CudaBuildError(f"ninja failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")

    def _collect_log(self, objects: list[Path]) -> Path:
        header = [
            f"# fastcot._C compiler output: nvcc {nvcc_version(self.toolkit.nvcc)} at {self.toolkit.nvcc}",
            f"# sass: {' '.join(f'sm_{a}' for a in self.archs)}  ptx: {self.ptx or 'none'}",
        ]
        steps = [*zip(SOURCES, map(log_of, objects)), ("link", self.build_dir / "link.log")]
        sections = [f"### {step}\n{log.read_text() if log.exists() else ''}" for step, log in steps]
        log_path = self.build_dir / "ptxas.log"
        log_path.write_text("\n".join(header) + "\n" + "\n".join(sections))
        return log_path


def log_of(obj: Path) -> Path:
    return obj.with_name(obj.name + ".log")


def ninja_path(path: Path) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


class BuildExtWithCuda(build_ext):
    """build_ext that hands fastcot._C to ninja and applies FASTCOT_BUILD_CUDA."""

    def run(self) -> None:
        self._cuda_mode = build_mode()
        self._cuda_toolkit = None
        self._dropped: set[str] = set()
        if self._cuda_mode == "0":
            self._drop_extension("FASTCOT_BUILD_CUDA=0")
        else:
            try:
                self._cuda_toolkit = find_toolkit()
            except CudaBuildError as err:
                self._fail(err)
        self.extensions = [e for e in self.extensions if e.name not in self._dropped]
        super().run()
        if self.inplace or self.editable_mode:
            self._copy_log_to_source()

    def build_extensions(self) -> None:
        super().build_extensions()
        # A failed optional build must leave nothing for copy/install steps to miss.
        self.extensions = [e for e in self.extensions if e.name not in self._dropped]

    def build_extension(self, ext: Extension) -> None:
        if ext.name != EXT_NAME:
            super().build_extension(ext)
            return
        output = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = ROOT / "build" / f"fastcot_cuda.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
        try:
            log = NinjaCudaBuild(self._cuda_toolkit, build_dir, output).run()
        except (CudaBuildError, OSError, subprocess.SubprocessError) as err:
            self._fail(err)
            return
        shutil.copyfile(log, output.parent / LOG_NAME)
        print(f"fastcot: built {output.name}; compiler output in {log}", flush=True)

    def _fail(self, err: Exception) -> None:
        if self._cuda_mode == "1":
            raise CudaBuildError(f"fastcot: FASTCOT_BUILD_CUDA=1 but fastcot._C cannot be built: {err}") from None
        self._drop_extension(f"{err} (set FASTCOT_BUILD_CUDA=1 to make this fatal)")

    def _drop_extension(self, why: str) -> None:
        print(f"fastcot: installing without the CUDA extension fastcot._C: {why}", file=sys.stderr, flush=True)
        self._dropped.add(EXT_NAME)
        # An extension left by an earlier build would be packaged or imported
        # as if it matched these sources.
        for directory in self._extension_dirs():
            for stale in [*directory.glob("_C.*.so"), *directory.glob("_C.*.pyd"), directory / LOG_NAME]:
                if stale.is_file():
                    print(f"fastcot: removing stale {stale}", file=sys.stderr)
                    stale.unlink()

    def _extension_dirs(self) -> list[Path]:
        dirs = [Path(self.build_lib) / "fastcot"]
        if self.inplace or self.editable_mode:
            dirs.append(ROOT / "fastcot")
        return dirs

    def _copy_log_to_source(self) -> None:
        built = Path(self.build_lib) / "fastcot" / LOG_NAME
        if EXT_NAME not in self._dropped and built.is_file():
            shutil.copyfile(built, ROOT / "fastcot" / LOG_NAME)


# Guarded so tests can import the helpers above (setuptools runs this file as __main__).
if __name__ == "__main__":
    setup(
        ext_modules=[Extension(EXT_NAME, sources=SOURCES, depends=HEADERS, optional=True)],
        cmdclass={"build_ext": BuildExtWithCuda},
    )

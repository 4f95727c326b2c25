"""Ahead-of-time compile check for every shipped Triton kernel configuration, without a GPU.

Each configuration is compiled with `triton.compile` for an explicit `GPUTarget` (sm_80 and
sm_90), and the cubin's resource usage (registers, stack, shared and local memory) is read
with the `cuobjdump` bundled in Triton's NVIDIA backend. Local memory or stack in use means
register spills: shipped configurations must have none.

Run `python -m fastcot.kernels.aot` for the report. `compile_launch` compiles one recorded
launch exactly as the runtime would specialize it (`fastcot bench static` uses it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ARCHS = (80, 90)


@dataclass(frozen=True)
class KernelSpec:
    """One kernel configuration to compile: argument types, constexprs and launch options."""

    name: str
    fn: object
    signature: dict
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 2
    # The launch's `maxnreg` (a register cap some configurations launch with), None for none.
    maxnreg: int | None = None
    # Arguments that are multiples of 16 at run time (pointers from torch, aligned sizes), so
    # the compiled code matches what Triton specializes to on the device.
    aligned: tuple = field(default=())
    # Float8 e4m3 conversions need sm_89 or newer: such specs compile for sm_90 only.
    archs: tuple = ARCHS


@dataclass
class Report:
    spec: KernelSpec
    arch: int
    registers: int
    stack: int
    shared: int
    local: int

    @property
    def spills(self) -> bool:
        return self.local > 0 or self.stack > 0


def cuobjdump_path() -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found at {path} (Triton's NVIDIA backend is missing)")
    return path


def compile_spec(spec: KernelSpec, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arg_names = list(spec.fn.arg_names)
    attrs = {(arg_names.index(a),): [["tt.divisibility", 16]] for a in spec.aligned}
    signature = dict(spec.signature)
    for k in spec.constexprs:
        signature[k] = "constexpr"
    src = ASTSource(fn=spec.fn, signature=signature, constexprs=dict(spec.constexprs), attrs=attrs)
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    if spec.maxnreg:
        options["maxnreg"] = spec.maxnreg
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def launch_source(fn, kwargs: dict, arch: int):
    """What `fn[grid](**kwargs)` would compile on an sm_`arch` GPU: (ASTSource, target, options).

    `kwargs` are a launch's keyword arguments, tensors included (any device, `meta` too: only
    their dtype and address alignment matter). Triton's own launch-time specialization decides
    the signature, the integers specialized to constants (a value of 1) and the 16-divisibility
    hints, so the cubin is the one the launcher would run, not a hand-written approximation."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(**kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), target, options.__dict__


def compile_launch(fn, kwargs: dict, arch: int):
    """`fn[grid](**kwargs)` compiled for sm_`arch` (see `launch_source`)."""
    import triton

    src, target, options = launch_source(fn, kwargs, arch)
    return triton.compile(src, target=target, options=options)


_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> tuple[int, int, int, int]:
    """(registers, stack, shared, local) of the single kernel in a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(cuobjdump_path()), "--dump-resource-usage", f.name],
            check=True, capture_output=True, text=True,
        ).stdout
    found = _USAGE.findall(text)
    if len(found) != 1:
        raise RuntimeError(f"expected one kernel's resource usage from cuobjdump, got:\n{text}")
    return tuple(int(v) for v in found[0])


def report(spec: KernelSpec, arch: int) -> Report:
    compiled = compile_spec(spec, arch)
    regs, stack, shared, local = resource_usage(compiled.asm["cubin"])
    # Triton allocates shared memory dynamically: the cubin shows 0, the metadata has it.
    shared = max(shared, int(compiled.metadata.shared))
    return Report(spec=spec, arch=arch, registers=regs, stack=stack, shared=shared, local=local)


# Modules whose `aot_specs()` list the configurations they launch.
SPEC_MODULES = (
    "fastcot.ops._int4_configs",
    "fastcot.ops.kv_cache",
    "fastcot.ops.paged_attention",
    "fastcot.ops.cascade_attention",
    "fastcot.ops.norm",
    "fastcot.ops.rotary",
    "fastcot.ops.activation",
)


def shipped_specs() -> list[KernelSpec]:
    """Every Triton kernel configuration fastcot ships."""
    import importlib

    return [spec for name in SPEC_MODULES for spec in importlib.import_module(name).aot_specs()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, action="append", help="SM versions (default: 80 and 90)")
    parser.add_argument("--filter", default="", help="only specs whose name contains this")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("note: TRITON_INTERPRET is set; compiling anyway", file=sys.stderr)
    failures = 0
    print(f"{'kernel configuration':<78} {'sm':>3} {'regs':>5} {'stack':>6} {'shared':>7} {'local':>6}")
    for spec in shipped_specs():
        if args.filter not in spec.name:
            continue
        for arch in args.arch or ARCHS:
            if arch not in spec.archs:
                continue
            r = report(spec, arch)
            flag = "  SPILLS" if r.spills else ""
            failures += r.spills
            print(f"{spec.name:<78} {arch:>3} {r.registers:>5} {r.stack:>6} {r.shared:>7} {r.local:>6}{flag}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

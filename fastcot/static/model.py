"""The bandwidth model: what fraction of copy bandwidth a kernel *could* reach, from its SASS.

A MODEL, NOT A MEASUREMENT. The grid runs in rounds of at most `blocks_per_sm x SMs` blocks
(waves). In a round of n blocks the busiest SM holds r = ceil(n / SMs) of them, and the round
lasts as long as the slowest of four limits:

- latency: one block's own chain (prologue + iterations + epilogue, replayed from the SASS by
  `fastcot.static.timing`; the r blocks of an SM run side by side);
- issue: the SM issues one warp-instruction per scheduler per cycle, r x the block's
  warp-instructions / 4;
- pipes: each execution pipe has its own rate (e.g. MUFU and conversions on the XU at 16
  lanes per clock), r x the block's warp-instructions on that pipe / rate;
- memory: the chip moves at most the copy bandwidth, n x the block's bytes / bandwidth;
- l2 (only for a kernel that reduces split-K partials itself): its streamed bytes and its
  partials (written by every program, read back by the last of each group) through the L2,
  n x (bytes + partial bytes) / L2 bandwidth.

The call then pays a fixed cost per kernel launched (the launch gap and ramp of a dependent
kernel in a CUDA graph) and moves its extra bytes (split-K partials, split-KV partials) through
the L2 (partials a kernel reduces itself move during its rounds: the `l2` limit above). A main
kernel launched with programmatic dependent launch (PDL, sm_90+) that starts
streaming its weights before it waits on the previous kernel (`griddepcontrol.wait`, ACQBULK in
SASS: `fastcot.static.sass.pdl_overlap`) overlaps that gap with the previous kernel's tail and
pays the smaller `pdl_launch_us` instead (what is left: the wait's release and the reads after
it). Predicted fraction = (bytes / copy bandwidth) / predicted time. The assumptions
(`Machine`) are printed with every report; docs/static_report.md explains how to read them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from fastcot.static.timing import Latencies


@dataclass(frozen=True)
class Machine:
    """What the model assumes about a GPU. Rates are warp-instructions per clock per SM, from
    NVIDIA's arithmetic-throughput table (results per clock / 32); clocks, bandwidth and
    latencies are assumptions to calibrate against measurements."""

    name: str
    arch: int
    sms: int
    clock_ghz: float
    copy_bandwidth_gbs: float  # what a large device-to-device copy reaches (read + write)
    dram_latency_ns: float  # a streaming load at high bandwidth (queueing included)
    l1_latency_cycles: float  # any other global load: data many threads share, taken as an L1 hit
    launch_us: float  # per kernel of a call, inside a CUDA graph
    pdl_launch_us: float  # the same for a PDL launch whose weight loads start before its wait
    l2_bandwidth_gbs: float  # split partials are written and read back through the L2
    issue_rate: float = 4.0  # one warp-instruction per scheduler per clock
    pipe_rates: dict = field(default_factory=dict)

    def latencies(self) -> Latencies:
        return Latencies(dram=self.dram_latency_ns * self.clock_ghz, cached=self.l1_latency_cycles)

    @property
    def bytes_per_cycle(self) -> float:
        """Copy bandwidth per SM clock, whole chip."""
        return self.copy_bandwidth_gbs / self.clock_ghz

    def describe(self) -> dict:
        return asdict(self)


# fp32 add/mul/fma: 64 (sm_80) or 128 (sm_90) results/clk/SM; half2 256; 32-bit integer, compare,
# min/max, logic and IMAD 64; conversions and MUFU 16; shuffles and loads/stores 32 lanes.
H100 = Machine(
    name="H100 SXM5 80GB (sm_90)", arch=90, sms=132, clock_ghz=1.755, copy_bandwidth_gbs=3000.0,
    dram_latency_ns=800.0, l1_latency_cycles=40.0, launch_us=1.5, pdl_launch_us=0.5, l2_bandwidth_gbs=6000.0,
    pipe_rates={"fma": 4.0, "alu": 2.0, "xu": 0.5, "lsu": 1.0, "tensor": 0.5, "uniform": 1.0},
)
A100 = Machine(
    name="A100 SXM4 80GB (sm_80)", arch=80, sms=108, clock_ghz=1.41, copy_bandwidth_gbs=1750.0,
    dram_latency_ns=800.0, l1_latency_cycles=40.0, launch_us=1.5, pdl_launch_us=1.5, l2_bandwidth_gbs=4000.0,
    pipe_rates={"fma": 2.0, "alu": 2.0, "xu": 0.5, "lsu": 1.0, "tensor": 0.5, "uniform": 1.0},
)
# sm_80 has no programmatic dependent launch: its PDL charge is the plain one (never used).
MACHINES = {90: H100, 80: A100}


@dataclass(frozen=True)
class BlockWork:
    """What one block of the main kernel does."""

    cycles: float  # its latency chain (timing.BlockTiming.cycles)
    warp_instructions: float
    pipe_instructions: dict  # pipe -> warp-instructions
    bytes: float  # bytes it moves from memory (the call's bytes / grid)
    l2_bytes: float = 0.0  # split-K partials it writes and (the group's last) reads back, per block


@dataclass(frozen=True)
class Prediction:
    fraction: float  # of copy bandwidth, for the whole call
    bound: str  # "memory", "issue" or "latency": what limits the largest round
    limiter: str  # finer: "memory", "latency", "issue" or the pipe ("xu", "fma", ...)
    time_us: float
    kernel_us: float  # the main kernel's rounds
    overhead_us: float  # launches and extra bytes
    rounds: list  # [{blocks, per_sm, repeat, cycles, limiter, load}]
    load: dict  # each limit's cycles over the main round's length (1.0 = the limiter)


def round_limits(work: BlockWork, blocks: int, machine: Machine) -> dict:
    """Cycles each limit needs for a round of `blocks` resident blocks."""
    per_sm = math.ceil(blocks / machine.sms)
    limits = {
        "latency": work.cycles,
        "issue": per_sm * work.warp_instructions / machine.issue_rate,
        "memory": blocks * work.bytes / machine.bytes_per_cycle,
    }
    if work.l2_bytes:
        limits["l2"] = blocks * (work.bytes + work.l2_bytes) / (machine.l2_bandwidth_gbs / machine.clock_ghz)
    for pipe, count in work.pipe_instructions.items():
        if pipe in machine.pipe_rates and count:
            limits[pipe] = per_sm * count / machine.pipe_rates[pipe]
    return limits


def predict(work: BlockWork, grid: int, blocks_per_sm: int, machine: Machine, *, call_bytes: float,
            extra_launches: int = 0, extra_bytes: float = 0.0, pdl: bool = False) -> Prediction:
    """Predicted fraction of copy bandwidth for a call moving `call_bytes` with a main kernel of
    `grid` blocks doing `work` each, plus `extra_launches` kernels moving `extra_bytes`. `pdl`:
    the main kernel is launched with PDL and streams before its wait (see the module docstring)."""
    if grid <= 0 or blocks_per_sm <= 0:
        raise ValueError(f"grid ({grid}) and blocks_per_sm ({blocks_per_sm}) must be positive")
    slots = blocks_per_sm * machine.sms
    rounds, remaining, cycles = [], grid, 0.0
    while remaining > 0:
        n = min(remaining, slots)
        limits = round_limits(work, n, machine)
        limiter = max(limits, key=limits.get)
        # Identical full rounds repeat: count them at once.
        repeat = remaining // n if n == slots else 1
        load = {k: round(v / limits[limiter], 3) for k, v in limits.items()}
        rounds.append({"blocks": n, "per_sm": math.ceil(n / machine.sms), "repeat": repeat,
                       "cycles": limits[limiter], "limiter": limiter, "load": load})
        cycles += repeat * limits[limiter]
        remaining -= repeat * n
    kernel_us = cycles / (machine.clock_ghz * 1e3)
    main_launch_us = machine.pdl_launch_us if pdl else machine.launch_us
    overhead_us = main_launch_us + extra_launches * machine.launch_us + extra_bytes / (machine.l2_bandwidth_gbs * 1e3)
    time_us = kernel_us + overhead_us
    ideal_us = call_bytes / (machine.copy_bandwidth_gbs * 1e3)
    main = max(rounds, key=lambda r: r["repeat"] * r["cycles"])
    limiter = main["limiter"]
    bound = "memory" if limiter in ("memory", "l2") else "latency" if limiter == "latency" else "issue"
    return Prediction(fraction=min(1.0, ideal_us / time_us), bound=bound, limiter=limiter, time_us=time_us,
                      kernel_us=kernel_us, overhead_us=overhead_us, rounds=rounds, load=main["load"])

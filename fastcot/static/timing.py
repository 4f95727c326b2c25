"""How long one warp takes through a block's path, replaying the compiler's own scheduling.

Each instruction issues once the scoreboards in its wait mask are clear and the previous
instruction's stall count has elapsed; a variable-latency instruction (loads, shuffles, MUFU,
conversions) clears its write scoreboard after a latency from `Latencies`. Asynchronous copies
(`LDGSTS`) complete per commit group (`LDGDEPBAR`), and `DEPBAR.LE SB0, N` waits until at most N
groups are in flight. The warp is alone: other warps of the SM are the model's business
(`fastcot.static.model`), and a `BAR.SYNC` costs a fixed time (every warp of the block runs the
same path). The result is the latency chain of an iteration: serialized round trips, a
single-buffered loop's wait, a prefetch that hides the load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fastcot.static.sass import NO_BARRIER, Instruction, access_bytes, classify

_DEPBAR = re.compile(r"SB0\s*,\s*0x([0-9a-fA-F]+)")


@dataclass(frozen=True)
class Latencies:
    """Cycles from issue until a variable-latency result can be used (assumptions)."""

    dram: float  # a streaming global load (weights, KV) at high load
    cached: float = 40.0  # any other global load (activations, block-table entries, scales): an L1 hit
    shared: float = 30.0  # LDS/LDSM/STS and shared-memory round trips
    shuffle: float = 30.0
    xu: float = 20.0  # MUFU and the conversions on the XU
    other: float = 20.0  # anything else that sets a scoreboard (S2R, LDC, HMMA, ...)
    read: float = 10.0  # a scoreboard guarding the source registers of a store or load
    barrier: float = 20.0  # BAR.SYNC, every warp of the block in step


def streaming_loads(path: list[Instruction], bytes_per_thread: float) -> set[int]:
    """Addresses of the global loads that bring the streamed data (weights, KV): vector loads
    (8 or 16 bytes a thread), those marked evict-first before unmarked and evict-last ones, the
    widest first, asynchronous copies before plain loads of a width, in program order, as long
    as they fit in `bytes_per_thread`. The other global loads
    read data many threads share (the activation vector every block of an SM re-reads, the
    block-table entries of a tile, a group's scales): they are assumed to hit L1."""
    loads = [i for i in path if classify(i) in ("global_load", "async_copy") and access_bytes(i) >= 8]
    chosen, covered = set(), 0.0
    # Stable sort: loads the kernel marks evict-first (`.EF`, its declared stream) before unmarked
    # ones and evict-last ones (`.EL`, declared reuse: the activations) after; then the widest;
    # then asynchronous copies (the multi-stage stream) before plain loads of the same width;
    # then program order, whatever order the compiler scheduled them in.
    def rank(ins):
        hint = 0 if "EF" in ins.modifiers else 2 if "EL" in ins.modifiers else 1
        return hint, -access_bytes(ins), classify(ins) != "async_copy"

    for ins in sorted(loads, key=rank):
        if covered + access_bytes(ins) > bytes_per_thread:
            break
        chosen.add(ins.address)
        covered += access_bytes(ins)
    return chosen


@dataclass
class Warp:
    """One warp replaying instructions; `t` is the cycle its next instruction may issue."""

    latencies: Latencies
    streaming: set[int]
    t: float = 0.0
    ready: list[float] = field(default_factory=lambda: [0.0] * 6)
    pending_copies: list[float] = field(default_factory=list)
    copy_groups: list[float] = field(default_factory=list)
    in_flight: list[tuple[float, float, int]] = field(default_factory=list)  # streaming (issue, done, bytes)

    def latency(self, ins: Instruction) -> float:
        cls = classify(ins)
        lat = self.latencies
        if cls in ("global_load", "async_copy"):
            return lat.dram if ins.address in self.streaming else lat.cached
        if cls in ("shared_load", "shared_store", "atomic"):
            return lat.shared
        if cls == "shuffle":
            return lat.shuffle
        if cls == "mufu" or (cls == "convert" and ins.base not in ("I2FP", "F2FP")):
            return lat.xu
        return lat.other

    def step(self, ins: Instruction) -> None:
        t = self.t
        for b in range(6):
            if ins.wait_mask >> b & 1:
                t = max(t, self.ready[b])
        if ins.base == "DEPBAR" and (m := _DEPBAR.search(ins.operands)):
            keep = int(m.group(1), 16)
            done = self.copy_groups[:-keep] if keep else self.copy_groups
            t = max([t, *done])
            self.copy_groups = self.copy_groups[len(done):]
        if ins.base == "BAR":
            t += self.latencies.barrier
        latency = self.latency(ins)
        if ins.base == "LDGSTS":
            self.pending_copies.append(t + latency)
        elif ins.base == "LDGDEPBAR":
            self.copy_groups.append(max(self.pending_copies, default=t))
            self.pending_copies = []
        if ins.address in self.streaming:
            self.in_flight.append((t, t + latency, 32 * access_bytes(ins)))
        if ins.write_barrier != NO_BARRIER:
            self.ready[ins.write_barrier] = max(self.ready[ins.write_barrier], t + latency)
        if ins.read_barrier != NO_BARRIER:
            self.ready[ins.read_barrier] = max(self.ready[ins.read_barrier], t + self.latencies.read)
        self.t = t + ins.stall

    def run(self, path: list[Instruction]) -> float:
        """Replays `path`; returns the cycles it took."""
        start = self.t
        for ins in path:
            self.step(ins)
        return self.t - start

    def finish(self) -> float:
        """Cycle at which every outstanding result has arrived (the block's end)."""
        return max([self.t, *self.ready, *self.copy_groups, *self.pending_copies])

    def peak_streaming_bytes(self, since: float = 0.0) -> int:
        """Most streaming bytes this warp had in flight at once after cycle `since`."""
        events = sorted([(s, b) for s, e, b in self.in_flight if e > since]
                        + [(e, -b) for s, e, b in self.in_flight if e > since])
        peak = level = 0
        for _, delta in events:
            level += delta
            peak = max(peak, level)
        return peak


@dataclass(frozen=True)
class BlockTiming:
    """One block's latency chain, from the warp replay."""

    cycles: float  # prologue + every iteration + epilogue, until the last result arrives
    iteration_cycles: float  # one steady-state iteration
    peak_streaming_bytes_per_warp: int


def block_timing(prologue: list[Instruction], loop: list[Instruction], epilogue: list[Instruction],
                 iterations: int, latencies: Latencies, streaming: set[int],
                 simulated: int = 8) -> BlockTiming:
    """Replays prologue, `iterations` loop iterations (the first `simulated`, then the last one's
    duration for the rest) and the epilogue."""
    warp = Warp(latencies, streaming)
    warp.run(prologue)
    durations = [warp.run(loop) for _ in range(min(iterations, simulated))]
    steady = durations[-1] if durations else 0.0
    steady_start = warp.t - steady
    extra = max(0, iterations - simulated) * steady
    warp.run(epilogue)
    return BlockTiming(
        cycles=warp.finish() + extra,
        iteration_cycles=steady,
        peak_streaming_bytes_per_warp=warp.peak_streaming_bytes(steady_start if durations else 0.0),
    )

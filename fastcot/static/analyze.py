"""One report row: a plan's main kernel read from its SASS and put through the model."""

from __future__ import annotations

import dataclasses

from fastcot.static import cubins, occupancy, sass
from fastcot.static.model import BlockWork, Machine, predict
from fastcot.static.targets import Plan
from fastcot.static.timing import block_timing, streaming_loads

# Keys every row has (null where they do not apply or the kernel could not be read).
FIELDS = (
    "kernel", "backend", "arch", "machine", "shape", "label", "config", "kernel_name", "origin",
    "regs", "smem", "stack", "local", "spills", "threads", "blocks_per_sm", "occupancy_limiter",
    "grid", "grid_dims", "waves", "wave_efficiency", "extra_launches", "extra_kernels",
    "loop_instructions", "loop_static_instructions", "loop_mix", "loop_opcodes", "loop_iterations", "loop_exits",
    "bytes_per_iteration", "loaded_bytes_per_iteration", "weights_per_iteration",
    "instructions_per_byte", "instructions_per_weight", "bytes_in_flight_per_sm", "copy_stages",
    "iteration_cycles", "block_cycles", "predicted_bw_fraction", "predicted_us", "bound", "limiter",
    "limit_load", "model_rounds", "pdl", "pdl_wait", "pdl_loads_before_wait", "pdl_overlap",
    "predicted_bw_fraction_no_pdl", "error",
)


def kernel_for(plan: Plan, arch: int) -> cubins.Kernel:
    launch = plan.main
    if plan.backend == "triton":
        return cubins.triton_kernel(launch.fn, launch.kwargs, arch)
    kernel = cubins.cuda_kernel(launch.source, launch.symbol, arch)
    # A csrc launch's dynamic shared memory is the launcher's choice, mirrored in the plan.
    return dataclasses.replace(kernel, dynamic_shared=launch.dynamic_shared) if launch.dynamic_shared else kernel


def base_row(plan: Plan, machine: Machine) -> dict:
    row = dict.fromkeys(FIELDS)
    row.update(
        kernel=plan.target.kernel, backend=plan.backend, arch=f"sm_{machine.arch}", machine=machine.name,
        shape=plan.target.shape, label=plan.target.label, config=plan.config, threads=plan.main.threads,
        grid=plan.grid_blocks, grid_dims=list(plan.main.grid), extra_launches=len(plan.launches) - 1,
        extra_kernels=[launch.name for launch in plan.launches[1:]], loop_iterations=plan.iterations,
        bytes_per_iteration=plan.bytes_per_iteration, weights_per_iteration=plan.weights_per_iteration,
    )
    return row


def error_row(target, backend: str, machine: Machine, why: str) -> dict:
    """A row for a target whose launch could not even be planned."""
    row = dict.fromkeys(FIELDS)
    row.update(kernel=target.kernel, backend=backend, arch=f"sm_{machine.arch}", machine=machine.name,
               shape=target.shape, label=target.label, config={}, error=why)
    return row


def analyze(plan: Plan, machine: Machine, kernel: cubins.Kernel) -> dict:
    """Registers, occupancy, waves, the main loop and the model's prediction for one row."""
    row = base_row(plan, machine)
    limits = occupancy.ARCHS[machine.arch]
    instrs = kernel.instructions
    loop = sass.hot_loop(instrs)
    if loop is None:
        raise cubins.Unavailable(f"{kernel.name}: no loop with global loads in its SASS")
    smem = occupancy.shared_per_block(limits, kernel.shared, kernel.dynamic_shared)
    occ = occupancy.blocks_per_sm(limits, plan.main.threads, kernel.registers, smem)
    waves = occupancy.waves(plan.grid_blocks, occ.blocks_per_sm, machine.sms)
    warps = plan.main.threads // 32
    path, pro, epi = loop.path, sass.prologue(instrs, loop), sass.epilogue(instrs, loop)
    per_thread = plan.bytes_per_iteration / plan.main.threads
    streaming = streaming_loads(path, per_thread)
    # A prologue that loads the first iteration's data ahead does it with the loop's own loads.
    opcodes = {i.opcode for i in path if i.address in streaming}
    streaming |= {i.address for i in pro if i.opcode in opcodes}
    timing = block_timing(pro, path, epi, plan.iterations, machine.latencies(), streaming)

    # Issue and pipes count what the average program runs: in an in-kernel split-K reduction all
    # but one program of each group leave at the first EXIT after the loop. The latency chain
    # keeps the longest way out (the last program's, which ends the round).
    g = plan.reduce_group
    epi_common = sass.epilogue_to_first_exit(instrs, loop) if g > 1 else epi

    def warp_count(pred) -> float:
        epi_avg = ((g - 1) * sum(map(pred, epi_common)) + sum(map(pred, epi))) / g
        return warps * (sum(map(pred, pro)) + plan.iterations * sum(map(pred, path)) + epi_avg)

    pipes = {p: warp_count(lambda i, p=p: sass.pipe(i) == p) for p in sass.PIPES}
    # Partials a kernel reduces itself move through the L2 during its rounds; those of an extra
    # launch cost their time after it.
    in_kernel = g > 1
    work = BlockWork(cycles=timing.cycles, warp_instructions=warp_count(lambda i: 1), pipe_instructions=pipes,
                     bytes=plan.call_bytes / plan.grid_blocks,
                     l2_bytes=plan.extra_bytes / plan.grid_blocks if in_kernel else 0.0)
    # The launch overlaps the previous kernel only if the launcher asks for PDL on this arch and
    # the SASS requests bytes before its wait and stores nothing before it.
    overlap = sass.pdl_overlap(instrs)
    credited = plan.main.pdl and overlap.streams_early

    def prediction(pdl: bool):
        return predict(work, plan.grid_blocks, occ.blocks_per_sm, machine, call_bytes=plan.call_bytes,
                       extra_launches=len(plan.launches) - 1, extra_bytes=0.0 if in_kernel else plan.extra_bytes,
                       pdl=pdl)

    pred = prediction(credited)
    resident = min(occ.blocks_per_sm, plan.grid_blocks / machine.sms)
    loaded = sum(sass.access_bytes(i) for i in path if sass.classify(i) in ("global_load", "async_copy"))
    row.update(
        kernel_name=kernel.name, origin=kernel.origin, regs=kernel.registers, smem=smem, stack=kernel.stack,
        local=kernel.local, spills=bool(kernel.stack or kernel.local), blocks_per_sm=occ.blocks_per_sm,
        occupancy_limiter=occ.limiter, waves=round(waves.waves, 3), wave_efficiency=round(waves.efficiency, 3),
        loop_instructions=len(path), loop_static_instructions=loop.static_size, loop_mix=sass.mix(path),
        loop_opcodes=sass.opcode_counts(path),
        loop_exits=loop.exits, loaded_bytes_per_iteration=loaded * plan.main.threads,
        instructions_per_byte=round(len(path) * warps / plan.bytes_per_iteration, 4),
        instructions_per_weight=(round(len(path) * plan.main.threads / plan.weights_per_iteration, 2)
                                 if plan.weights_per_iteration else None),
        bytes_in_flight_per_sm=round(timing.peak_streaming_bytes_per_warp * warps * resident),
        copy_stages=sass.depbar_depth(path), iteration_cycles=round(timing.iteration_cycles),
        block_cycles=round(timing.cycles), predicted_bw_fraction=round(pred.fraction, 3),
        predicted_us=round(pred.time_us, 2), bound=pred.bound, limiter=pred.limiter, limit_load=pred.load,
        model_rounds=pred.rounds, pdl=plan.main.pdl, pdl_wait=overlap.waits,
        pdl_loads_before_wait=overlap.loads_before,
        pdl_overlap=credited, predicted_bw_fraction_no_pdl=round(prediction(False).fraction, 3),
    )
    return row

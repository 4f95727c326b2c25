"""Reading `cuobjdump -sass` listings: instructions with their control bits, the hot loop, the
path one iteration takes through it, and its instruction mix.

Volta through Hopper encode every instruction in 128 bits, printed by cuobjdump as two 64-bit
words; the second word carries the scheduling control the compiler chose: stall cycles before
the next instruction, the scoreboard a variable-latency instruction sets when its result is
written (`write_barrier`) or its sources are read (`read_barrier`), and the scoreboards an
instruction waits on (`wait_mask`). `fastcot.static.timing` replays them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

NO_BARRIER = 7

_FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)\s*$")
_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+(.*?)\s*;?\s*/\*\s*(0x[0-9a-fA-F]+)\s*\*/\s*$")
_CONTROL = re.compile(r"^\s*/\*\s*(0x[0-9a-fA-F]+)\s*\*/\s*$")
_PREDICATE = re.compile(r"^@(!?U?P[0-9T])\s+")
_HEX = re.compile(r"0x([0-9a-fA-F]+)")


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: `[@predicate] opcode operands` at `address`, with its control word."""

    address: int
    predicate: str
    opcode: str
    operands: str
    control: int | None = None

    @property
    def base(self) -> str:
        """The opcode without modifiers: `LDG` for `LDG.E.128.CONSTANT`."""
        return self.opcode.split(".", 1)[0]

    @property
    def modifiers(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    @property
    def conditional(self) -> bool:
        return self.predicate not in ("", "PT")

    @property
    def stall(self) -> int:
        """Cycles the scheduler waits before this warp's next instruction (at least 1)."""
        return max(1, (self.control >> 41) & 0xF) if self.control is not None else 1

    @property
    def write_barrier(self) -> int:
        return (self.control >> 46) & 7 if self.control is not None else NO_BARRIER

    @property
    def read_barrier(self) -> int:
        return (self.control >> 49) & 7 if self.control is not None else NO_BARRIER

    @property
    def wait_mask(self) -> int:
        return (self.control >> 52) & 0x3F if self.control is not None else 0

    @property
    def target(self) -> int | None:
        """The address a direct branch or call goes to."""
        if self.base not in ("BRA", "CALL", "JMP"):
            return None
        found = _HEX.findall(self.operands)
        return int(found[-1], 16) if found else None

    def text(self) -> str:
        pred = f"@{self.predicate} " if self.predicate else ""
        return f"/*{self.address:04x}*/ {pred}{self.opcode} {self.operands}".rstrip()


def parse(text: str) -> dict[str, list[Instruction]]:
    """Every function of a `cuobjdump -sass` listing, by (mangled) name, in address order."""
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    pending: Instruction | None = None
    for line in text.splitlines():
        if match := _FUNCTION.match(line):
            current = functions.setdefault(match.group(1), [])
            pending = None
        elif current is not None and (match := _INSTRUCTION.match(line)):
            pending = _instruction(int(match.group(1), 16), match.group(2))
            current.append(pending)
        elif pending is not None and (match := _CONTROL.match(line)):
            # The second 64-bit word of the instruction printed just before.
            current[-1] = Instruction(pending.address, pending.predicate, pending.opcode, pending.operands,
                                      int(match.group(1), 16))
            pending = None
    return functions


def _instruction(address: int, body: str) -> Instruction:
    predicate = ""
    if match := _PREDICATE.match(body):
        predicate = match.group(1)
        body = body[match.end():]
    opcode, _, operands = body.strip().partition(" ")
    return Instruction(address, predicate, opcode, operands.strip())


# --- classification --------------------------------------------------------------------------

# What an instruction does, for the mix; `PIPE` says which execution unit the model charges.
_CLASSES = {
    "global_load": {"LDG"}, "async_copy": {"LDGSTS"}, "global_store": {"STG"},
    "shared_load": {"LDS", "LDSM"}, "shared_store": {"STS", "STSM"}, "local": {"LDL", "STL"},
    "atomic": {"ATOM", "ATOMG", "ATOMS", "RED"}, "shuffle": {"SHFL"},
    "mma": {"HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA", "QMMA", "OMMA"},
    "mufu": {"MUFU"},
    "convert": {"I2F", "F2F", "F2I", "I2I", "FRND", "I2FP", "F2FP", "F2IP"},
    "fp32": {"FFMA", "FADD", "FMUL", "FMNMX", "FSETP", "FSEL", "FSET", "FCHK", "FSWZADD", "FFMA32I", "FADD32I",
             "FMUL32I"},
    "fp16x2": {"HADD2", "HFMA2", "HMUL2", "HMNMX2", "HSETP2", "HSET2", "HADD2_32I", "HFMA2_32I", "HMUL2_32I"},
    "int": {"IADD3", "IMAD", "IMUL", "LOP3", "LOP", "SHF", "SHL", "SHR", "LEA", "ISETP", "SEL", "PRMT", "IABS",
            "IMNMX", "POPC", "FLO", "BMSK", "SGXT", "BREV", "IADD", "VIADD", "VIMNMX", "IDP", "IDP4A", "PLOP3",
            "VOTE", "MATCH", "IADD32I", "LOP32I", "IMAD32I", "ISCADD", "REDUX"},
    "move": {"MOV", "MOV32I", "CS2R", "S2R", "P2R", "R2P", "S2UR", "R2UR"},
    "constant": {"LDC"},
    "barrier": {"BAR", "DEPBAR", "LDGDEPBAR", "MEMBAR", "ERRBAR", "ARRIVES", "SYNCS"},
    "control": {"BRA", "BRX", "JMP", "EXIT", "RET", "CALL", "BSSY", "BSYNC", "BREAK", "NOP", "WARPSYNC", "YIELD",
                "KILL", "BPT", "NANOSLEEP", "ACQBULK", "ELECT", "ENDCOLLECTIVE"},
}
_CLASS_OF = {op: cls for cls, ops in _CLASSES.items() for op in ops}
# Conversions that run on the XU (16 lanes per clock per SM); I2FP/F2FP are taken to run on the
# integer pipe (NVIDIA documents no rate for them: an assumption, stated in docs/static_report.md).
XU_CONVERSIONS = {"I2F", "F2F", "F2I", "I2I", "FRND", "F2IP"}
PIPES = ("fma", "alu", "xu", "lsu", "tensor", "uniform")


def classify(ins: Instruction) -> str:
    if ins.base.startswith("U") and ins.base not in _CLASS_OF:
        return "uniform"  # ULDC, UIADD3, ULOP3, ...: the uniform datapath, one per warp
    return _CLASS_OF.get(ins.base, "other")


def pipe(ins: Instruction) -> str | None:
    """The execution pipe the model charges for `ins` (None: issue slot only)."""
    cls = classify(ins)
    if cls in ("fp16x2",) or ins.base in ("FFMA", "FADD", "FMUL", "FFMA32I", "FADD32I", "FMUL32I", "IMAD", "IMUL",
                                          "IMAD32I", "IDP", "IDP4A"):
        return "fma"
    if cls == "mufu" or ins.base in XU_CONVERSIONS:
        return "xu"
    if cls in ("fp32", "int", "move", "convert"):
        return "alu"
    if cls in ("global_load", "async_copy", "global_store", "shared_load", "shared_store", "local", "atomic",
               "shuffle", "constant"):
        return "lsu"
    if cls == "mma":
        return "tensor"
    if cls == "uniform":
        return "uniform"
    return None


def access_bytes(ins: Instruction) -> int | None:
    """Bytes one thread moves with a load or store (None for other instructions)."""
    if classify(ins) not in ("global_load", "async_copy", "global_store", "shared_load", "shared_store", "local"):
        return None
    mods = set(ins.modifiers)
    if ins.base in ("LDSM", "STSM"):  # .16.M88.N: N 8x8 matrices of 16-bit, 4 bytes per thread each
        n = next((int(m) for m in ins.modifiers if m in ("1", "2", "4")), 1)
        return 4 * n
    for width, size in (("128", 16), ("64", 8), ("U16", 2), ("S16", 2), ("U8", 1), ("S8", 1)):
        if width in mods:
            return size
    return 4


def mix_key(ins: Instruction) -> str:
    """Key of `ins` in the loop mix: memory by width, conversions and MMA by opcode, ALU by class."""
    cls = classify(ins)
    if cls in ("global_load", "async_copy", "global_store", "shared_load", "shared_store"):
        return f"{ins.base}.{8 * access_bytes(ins)}"
    if cls in ("convert", "mma", "mufu", "shuffle", "local", "atomic"):
        return ins.base
    return cls


def _sorted(counts: Counter) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def mix(path: list[Instruction]) -> dict[str, int]:
    return _sorted(Counter(mix_key(i) for i in path))


def opcode_counts(path: list[Instruction]) -> dict[str, int]:
    """Instructions by opcode with the modifiers that name a width or a conversion
    (`HADD2.F32`, `F2F.BF16.F16`, `LDG.E.128`): the mix at the finest grain."""
    return _sorted(Counter(i.opcode for i in path))


# --- control flow ----------------------------------------------------------------------------


@dataclass
class Loop:
    """A backward branch at `tail` to `head` (indices into the function's instructions)."""

    head: int
    tail: int
    global_loads: int = 0
    inner_loops: int = 0
    exits: int = 0
    path: list[Instruction] = field(default_factory=list)

    @property
    def static_size(self) -> int:
        return self.tail - self.head + 1


def _unconditional_jump(ins: Instruction) -> bool:
    return ins.base in ("BRA", "JMP", "BRX", "EXIT", "RET", "KILL") and not ins.conditional


def loops(instrs: list[Instruction]) -> list[Loop]:
    """Every loop: a branch to an earlier address (a branch to itself is the trap at the end)."""
    index = {ins.address: i for i, ins in enumerate(instrs)}
    found = []
    for i, ins in enumerate(instrs):
        target = ins.target
        if ins.base == "BRA" and target is not None and target < ins.address and target in index:
            loop = Loop(head=index[target], tail=i)
            body = instrs[loop.head:loop.tail + 1]
            loop.global_loads = sum(classify(b) in ("global_load", "async_copy") for b in body)
            found.append(loop)
    for loop in found:
        loop.inner_loops = sum(o is not loop and loop.head <= o.head and o.tail < loop.tail for o in found)
    return found


def hot_loop(instrs: list[Instruction]) -> Loop | None:
    """The loop with the most global loads (the streaming loop); among equals the innermost.
    Its `path` is one iteration (see `longest_path`)."""
    candidates = [lp for lp in loops(instrs) if lp.global_loads > 0]
    if not candidates:
        return None
    loop = max(candidates, key=lambda lp: (lp.global_loads, -lp.static_size))
    path = longest_path(instrs, loop.head, lambda i: i == loop.tail, loop.head, loop.tail)
    loop.path = path or instrs[loop.head:loop.tail + 1]
    index = {ins.address: i for i, ins in enumerate(instrs)}
    loop.exits = sum(
        1 for ins in instrs[loop.head:loop.tail]
        if ins.target is not None and ins.base == "BRA" and not loop.head <= index.get(ins.target, -1) <= loop.tail
    )
    return loop


def longest_path(instrs: list[Instruction], start: int, is_end, lo: int, hi: int) -> list[Instruction]:
    """The longest chain of instructions from `start` to an index where `is_end(i)` holds,
    following fall-through and forward branches inside `[lo, hi]`.

    For a loop body this is the iteration that runs every optional block (masked tails,
    prefetches) and the longer arm of every either/or (e.g. a dtype dispatch); backward
    branches inside (inner loops) are not followed, so an inner loop counts once.
    Returns [] when no end is reachable."""
    index = {ins.address: i for i, ins in enumerate(instrs)}
    best = {start: 1}
    previous: dict[int, int] = {}
    ends = []
    for i in range(start, hi + 1):
        if i not in best:
            continue
        if is_end(i):
            ends.append(i)
            if i == hi:
                continue
        ins = instrs[i]
        successors = []
        if not _unconditional_jump(ins):
            successors.append(i + 1)
        if ins.base in ("BRA", "JMP") and ins.target is not None:
            j = index.get(ins.target)
            if j is not None and i < j <= hi and j >= lo:
                successors.append(j)
        for j in successors:
            if j <= hi and best[i] + 1 > best.get(j, 0):
                best[j] = best[i] + 1
                previous[j] = i
    if not ends:
        return []
    end = max(ends, key=lambda i: best[i])
    chain = [end]
    while chain[-1] != start:
        chain.append(previous[chain[-1]])
    return [instrs[i] for i in reversed(chain)]


def prologue(instrs: list[Instruction], loop: Loop) -> list[Instruction]:
    """Entry to the loop head (exclusive): the longest way in."""
    path = longest_path(instrs, 0, lambda i: i == loop.head, 0, loop.head)
    return path[:-1] if path else instrs[:loop.head]


def epilogue(instrs: list[Instruction], loop: Loop) -> list[Instruction]:
    """From the instruction after the loop to an EXIT: the longest way out."""
    start = loop.tail + 1
    if start >= len(instrs):
        return []
    return longest_path(instrs, start, lambda i: instrs[i].base == "EXIT", start, len(instrs) - 1)


def epilogue_to_first_exit(instrs: list[Instruction], loop: Loop) -> list[Instruction]:
    """From the instruction after the loop to the first EXIT after it in program order: the way
    out of the programs of a split-K group that are not the last to arrive (the last one goes on
    to reduce the group's partials). [] when no EXIT follows the loop."""
    start = loop.tail + 1
    exits = [n for n in range(start, len(instrs)) if instrs[n].base == "EXIT"]
    if not exits:
        return []
    return longest_path(instrs, start, lambda i: i == exits[0], start, exits[0])


def depbar_depth(path: list[Instruction]) -> int | None:
    """Copy groups (`LDGDEPBAR`) a loop leaves in flight while it computes: 1 + the largest N
    of its `DEPBAR.LE SB0, N` waits (None when it uses no asynchronous copies)."""
    if not any(classify(i) == "async_copy" for i in path):
        return None
    waits = [int(m.group(1), 16) for i in path if i.base == "DEPBAR" and (m := _HEX.search(i.operands))]
    return 1 + max(waits, default=0)


@dataclass(frozen=True)
class PdlOverlap:
    """How a kernel meets programmatic dependent launch: whether it waits on the previous grid
    (`griddepcontrol.wait`, ACQBULK) and what it does before the first wait in program order."""

    waits: bool
    loads_before: int  # global loads, asynchronous copies and L2 prefetches issued before the wait
    stores_before: int  # global stores and atomics before the wait (a PDL launch must have none)
    triggers: bool  # `griddepcontrol.launch_dependents` (PREEXIT)

    @property
    def streams_early(self) -> bool:
        """Its first bytes are requested while the previous kernel may still run, and it writes
        nothing until that kernel is done."""
        return self.waits and self.loads_before > 0 and self.stores_before == 0


def pdl_overlap(instrs: list[Instruction]) -> PdlOverlap:
    """Read the PDL wait and what precedes it. ptxas keeps `asm volatile` loads and cp.async
    ahead of the wait but may sink ordinary loads below it, so only the SASS can tell."""
    waits = [n for n, i in enumerate(instrs) if i.base == "ACQBULK"]
    first = waits[0] if waits else len(instrs)
    before = instrs[:first]
    loads = sum(1 for i in before if classify(i) in ("global_load", "async_copy")
                or (i.base == "CCTL" and any(m.startswith("PF") for m in i.modifiers)))
    stores = sum(1 for i in before if classify(i) == "global_store" or i.base in ("ATOM", "ATOMG", "RED"))
    return PdlOverlap(waits=bool(waits), loads_before=loads if waits else 0, stores_before=stores if waits else 0,
                      triggers=any(i.base == "PREEXIT" for i in instrs))

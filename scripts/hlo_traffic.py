"""The kernels of a compiled XLA program and the bytes each moves, read from its optimized HLO text.

An estimate, not a measurement: each kernel (a fusion, a library call, a copy) counts the bytes of
its operands and results, except that an operand read only through a gather or a slice counts what
is gathered, and a scatter or an in-place update counts only what it writes. Loops count their
body once per known trip. For memory-bound kernels, bytes / bandwidth is a floor on their time;
for matmuls and attention it is not (they are bound by arithmetic).

    kernels = hlo_traffic.kernels(compiled.as_text())
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
              "f64": 8, "s64": 8, "u64": 8}
ARRAY = re.compile(r"\b(" + "|".join(ITEM_BYTES) + r")\[([\d,]*)\]")
HEADER = re.compile(r"^(ENTRY )?%(\S+) \(.*\{\s*$")
INSTRUCTION = re.compile(r"^\s+(ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\((.*?)\)(, .*)?$")
NOT_KERNELS = {"bitcast", "get-tuple-element", "parameter", "tuple", "constant", "after-all", "partition-id",
               "replica-id", "opt-barrier", "add-dependency"}
ELEMENTWISE = {"bitcast", "convert", "copy", "negate", "exponential", "log", "add", "subtract", "multiply", "divide",
               "select", "compare", "maximum", "minimum", "and", "or", "not", "abs", "tanh", "reshape"}
READS_PART = {"gather": 0, "dynamic-slice": 0, "slice": 0}  # op: the operand it reads only part of
WRITES_PART = {"scatter": 2, "dynamic-update-slice": 1}  # op: the operand holding what it writes


@dataclass
class Kernel:
    name: str
    op: str  # fusion, custom-call, copy, ...
    target: str  # a custom call's target (cuBLAS, cuDNN), a fusion's kind
    op_name: str  # what JAX named the operation (metadata), for grouping
    bytes: int  # read + written, times the loop trips around it
    launches: int


@dataclass
class _Instruction:
    name: str
    type: str
    op: str
    operands: list[str]
    arguments: str  # the text between the parentheses: a parameter's number
    attributes: str
    root: bool


def array_bytes(hlo_type: str, item_bytes: int | None = None) -> int:
    """Bytes of an HLO type: `bf16[8,128]{1,0}`, or the sum over a tuple's arrays (at `item_bytes` an element)."""
    return sum(math.prod(int(d) for d in dims.split(",") if d) * (item_bytes or ITEM_BYTES[dtype])
               for dtype, dims in ARRAY.findall(hlo_type))


def _item_bytes(hlo_type: str) -> int:
    match = ARRAY.search(hlo_type)
    return ITEM_BYTES[match.group(1)] if match else 4


def computations(hlo_text: str) -> tuple[dict[str, list[_Instruction]], str]:
    """{computation name: its instructions}, and the entry computation's name."""
    found, current, entry = {}, None, None
    for line in hlo_text.splitlines():
        header = HEADER.match(line)
        if header:
            current, found[header.group(2)] = header.group(2), []
            entry = current if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (m := INSTRUCTION.match(line)):
            operands = re.findall(r"%([\w.\-]+)", m.group(5))
            found[current].append(_Instruction(m.group(2), m.group(3), m.group(4), operands, m.group(5), m.group(6) or "",
                                               bool(m.group(1))))
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return found, entry


def _attribute(instruction: _Instruction, pattern: str) -> str:
    match = re.search(pattern, instruction.attributes)
    return match.group(1) if match else ""


def _parameter_reads(body: list[_Instruction], parameter: _Instruction) -> int:
    """Bytes a fusion reads of one parameter: all of it, unless every path from it through elementwise
    ops ends in a gather/slice (then what those take) or is the buffer a scatter updates in place (none)."""
    users = {}
    for instruction in body:
        for position, operand in enumerate(instruction.operands):
            users.setdefault(operand, []).append((instruction, position))
    read, frontier, seen = 0, [parameter], set()
    while frontier:
        value = frontier.pop()
        if value.root or value.name not in users:  # the fusion's result depends on all of it
            return array_bytes(parameter.type)
        for user, position in users[value.name]:
            if user.op in READS_PART and position == READS_PART[user.op]:
                read += array_bytes(user.type, _item_bytes(parameter.type))
            elif user.op in WRITES_PART and position == 0 and user.root:
                continue  # the buffer updated in place: only the updates are written
            elif user.op in ELEMENTWISE:
                if user.name not in seen:
                    seen.add(user.name)
                    frontier.append(user)
            else:
                return array_bytes(parameter.type)
    return read


def _fusion_bytes(instruction: _Instruction, shapes: dict[str, str], body: list[_Instruction]) -> int:
    parameters = {int(b.arguments): b for b in body if b.op == "parameter"}
    read = sum(_parameter_reads(body, parameters[i]) if i in parameters else array_bytes(shapes.get(operand, ""))
               for i, operand in enumerate(instruction.operands))
    root = next((b for b in body if b.root), None)
    if root is not None and root.op in WRITES_PART:  # in place: writes only the updates
        return read + array_bytes({b.name: b.type for b in body}.get(root.operands[WRITES_PART[root.op]], ""))
    return read + array_bytes(instruction.type)


def kernels(hlo_text: str) -> list[Kernel]:
    """Every kernel the entry computation launches (loops unrolled by their known trip counts)."""
    found, entry = computations(hlo_text)
    result: list[Kernel] = []

    def walk(name: str, trips: int) -> None:
        shapes = {i.name: i.type for i in found[name]}
        for instruction in found[name]:
            if instruction.op in NOT_KERNELS:
                continue
            if instruction.op == "while":
                count = _attribute(instruction, r'"known_trip_count":\{"n":"(\d+)"')
                walk(_attribute(instruction, r"body=%([\w.\-]+)"), trips * int(count or 1))
                continue
            if instruction.op in ("call", "conditional"):
                for called in re.findall(r"(?:to_apply=|calls=|branch_computations=\{)%([\w.\-]+)", instruction.attributes):
                    walk(called, trips)
                continue
            called = _attribute(instruction, r"calls=%([\w.\-]+)")
            if instruction.op == "fusion" and called in found:
                moved = _fusion_bytes(instruction, shapes, found[called])
            else:  # a library call's workspace (the s8 scratch of cuBLAS) is not traffic
                written = re.sub(r"\bs8\[\d+\]\{0\}", "", instruction.type)
                moved = array_bytes(written) + sum(array_bytes(shapes.get(o, "")) for o in instruction.operands)
            target = _attribute(instruction, r'custom_call_target="([^"]*)"') or _attribute(instruction, r"kind=(\w+)")
            result.append(Kernel(instruction.name, instruction.op, target,
                                 _attribute(instruction, r'op_name="([^"]*)"'), moved * trips, trips))

    walk(entry, 1)
    return result


def category(kernel: Kernel) -> str:
    """matmul (cuBLAS, or XLA's Triton GEMMs), attention (cuDNN), or fusion (everything XLA emits itself)."""
    if "cublas" in kernel.target or kernel.name.startswith(("gemm_fusion", "triton_gemm")) or kernel.op == "dot":
        return "matmul"
    if "cudnn" in kernel.target:
        return "attention"
    return "fusion"

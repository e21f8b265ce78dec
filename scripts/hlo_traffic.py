"""The kernels of a compiled XLA program and the bytes each moves, read from its optimized HLO text.

An estimate, not a measurement: each kernel (a fusion, a library call, a copy) counts the bytes of
its operands and results, except that an operand read only through a gather or a slice counts what
is gathered (at most all of it), and a fusion that updates its operand in place counts the entries
it updates (written, and read back by a scatter-add). Loops count their body once per known trip; a
conditional, its branch that moves the most. Caches are ignored. For memory-bound kernels, bytes /
bandwidth is a floor on their time; for matmuls and attention it is not (bound by arithmetic).

    kernels = hlo_traffic.kernels(compiled.as_text())
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hlo_text import Instruction, array_bytes, computations, item_bytes

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


def _attribute(instruction: Instruction, pattern: str) -> str:
    match = re.search(pattern, instruction.attributes)
    return match.group(1) if match else ""


def _parameter_reads(body: list[Instruction], users: dict, parameter: Instruction) -> int:
    """Bytes a fusion reads of one parameter: all of it, unless every path from it through elementwise
    ops ends in a gather/slice (then what those take, at most all of it), or it is the very buffer the
    fusion's scatter updates in place (then the rows a scatter-add reads back; an update slice reads none).
    `users`: each value's (user, operand position) pairs in `body`."""
    whole = array_bytes(parameter.type)
    read, frontier, seen = 0, [parameter], set()
    while frontier:
        value = frontier.pop()
        if value.root or value.name not in users:  # the fusion's result depends on all of it
            return whole
        for user, position in users[value.name]:
            if user.op in READS_PART and position == READS_PART[user.op]:
                read += array_bytes(user.type, item_bytes(parameter.type))
            elif user.op in WRITES_PART and position == 0 and user.root and value is parameter:
                read += _updated_bytes(body, user) if user.op == "scatter" else 0
            elif user.op in ELEMENTWISE:
                if user.name not in seen:
                    seen.add(user.name)
                    frontier.append(user)
            else:
                return whole
    return min(read, whole)


def _updated_bytes(body: list[Instruction], root: Instruction) -> int:
    """What an in-place scatter or update slice writes: its updates, in the buffer's dtype."""
    updates = next((b.type for b in body if b.name == root.operands[WRITES_PART[root.op]]), "")
    return array_bytes(updates, item_bytes(root.type))


def _fusion_bytes(instruction: Instruction, shapes: dict[str, str], body: list[Instruction]) -> int:
    parameters = {int(b.arguments): b for b in body if b.op == "parameter"}
    users = {}
    for user in body:
        for position, operand in enumerate(user.operands):
            users.setdefault(operand, []).append((user, position))
    read = sum(_parameter_reads(body, users, parameters[i]) if i in parameters else array_bytes(shapes.get(operand, ""))
               for i, operand in enumerate(instruction.operands))
    root = next((b for b in body if b.root), None)
    in_place = root is not None and root.op in WRITES_PART and any(
        root.operands[0] == p.name for p in parameters.values())
    return read + (_updated_bytes(body, root) if in_place else array_bytes(instruction.type))


def kernels(hlo_text: str) -> list[Kernel]:
    """Every kernel the entry computation launches (loops unrolled by their known trip counts; of a
    conditional's branches, the one that moves the most)."""
    found, entry = computations(hlo_text)

    def walk(name: str, trips: int) -> list[Kernel]:
        shapes, launched = {i.name: i.type for i in found[name]}, []
        for instruction in found[name]:
            if instruction.op in NOT_KERNELS:
                continue
            if instruction.op == "while":
                count = _attribute(instruction, r'"known_trip_count":\{"n":"(\d+)"')
                launched += walk(_attribute(instruction, r"body=%([\w.\-]+)"), trips * int(count or 1))
            elif instruction.op == "call":
                launched += walk(_attribute(instruction, r"to_apply=%([\w.\-]+)"), trips)
            elif instruction.op == "conditional":
                branches = re.findall(r"(?:branch_computations=\{|, |true_computation=|false_computation=)%([\w.\-]+)",
                                      instruction.attributes)
                launched += max((walk(b, trips) for b in branches if b in found), default=[],
                                key=lambda branch: sum(k.bytes for k in branch))
            else:
                launched.append(_kernel(instruction, shapes, found, trips))
        return launched

    return walk(entry, 1)


def _kernel(instruction: Instruction, shapes: dict[str, str], found: dict, trips: int) -> Kernel:
    called = _attribute(instruction, r"calls=%([\w.\-]+)")
    if instruction.op == "fusion" and called in found:
        moved = _fusion_bytes(instruction, shapes, found[called])
    else:  # a library call's workspace (the s8 scratch of cuBLAS) is not traffic
        written = re.sub(r"\bs8\[\d+\]\{0\}", "", instruction.type)
        moved = array_bytes(written) + sum(array_bytes(shapes.get(o, "")) for o in instruction.operands)
    target = _attribute(instruction, r'custom_call_target="([^"]*)"') or _attribute(instruction, r"kind=(\w+)")
    return Kernel(instruction.name, instruction.op, target, _attribute(instruction, r'op_name="([^"]*)"'),
                  moved * trips, trips)


def category(kernel: Kernel) -> str:
    """matmul (cuBLAS, or XLA's Triton GEMMs), attention (cuDNN), pallas (our Triton kernels), or fusion
    (everything XLA emits itself)."""
    if "cublas" in kernel.target or kernel.name.startswith(("gemm_fusion", "triton_gemm")) or kernel.op == "dot":
        return "matmul"
    if "cudnn" in kernel.target:
        return "attention"
    if "triton" in kernel.target:  # a custom call of Triton code: a pallas_call
        return "pallas"
    return "fusion"

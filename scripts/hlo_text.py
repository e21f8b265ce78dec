"""Optimized HLO text (what `compiled.as_text()` prints) as computations of instructions, and the bytes of
its types: what hlo_traffic.py reads.
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


@dataclass
class Instruction:
    name: str
    type: str
    op: str
    operands: list[str]
    arguments: str  # the text between the parentheses: a parameter's number
    attributes: str
    root: bool


def array_bytes(hlo_type: str, element_bytes: int | None = None) -> int:
    """Bytes of an HLO type: `bf16[8,128]{1,0}`, or the sum over a tuple's arrays (at `element_bytes` an element)."""
    return sum(math.prod(int(d) for d in dims.split(",") if d) * (element_bytes or ITEM_BYTES[dtype])
               for dtype, dims in ARRAY.findall(hlo_type))


def item_bytes(hlo_type: str) -> int:
    match = ARRAY.search(hlo_type)
    return ITEM_BYTES[match.group(1)] if match else 4


def computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
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
            found[current].append(Instruction(m.group(2), m.group(3), m.group(4), operands, m.group(5), m.group(6) or "",
                                               bool(m.group(1))))
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return found, entry

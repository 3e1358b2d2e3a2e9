"""What one execution of a compiled XLA program moves per device, read from its optimized HLO text.

XLA's cost analysis (`compiled.cost_analysis()`) counts the body of every while loop once, so a
model whose layers run under `jax.lax.scan` shows one layer's work. `step_traffic` walks the
program's control flow instead, multiplying each loop body by its trip count, and sums:

    hbm_bytes     bytes the top-level instructions read and write in HBM (memory space 0; the
                  TPU compiler marks VMEM-resident arrays `S(1)`): operands + results, except that
                  an operand that is only sliced counts the slice (the scanned layer's weights
                  read out of the stacked array) and an in-place `dynamic-update-slice` counts
                  the update
    ici_bytes     bytes each device sends in cross-device collectives, by kind, for ring
                  algorithms over large groups: all-reduce 2x its size, all-gather its result,
                  reduce-scatter its operand, all-to-all and collective-permute their operand;
                  collectives inside fusions included (an all-reduce whose fusion only slices
                  it is the TPU compiler's reduce-scatter)
    loops         every while loop with its trip count (None: decided at run time, counted once)

A conditional counts its most expensive branch. Trip counts are read from the loop condition
(`counter < constant` with the counter starting at 0: what `scan` and `fori_loop` with static
bounds compile to).
"""

from __future__ import annotations

import dataclasses
import math
import re

_BYTES_PER_ELEMENT = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                      "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                      "c128": 16, "token": 0}
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")
_NAME = re.compile(r"%([\w.\-]+)")
_COMPUTATION = re.compile(r"^(ENTRY )?%([\w.\-]+) ")
_INSTRUCTION = re.compile(r"^\s+(ROOT )?%([\w.\-]+) = (.*)$")
# Instructions that move no data of their own, or whose cost is counted where they lead.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
         "after-all", "partition-id", "replica-id", "opt-barrier", "optimization-barrier", "add-dependency"}
_SLICES = {"dynamic-slice", "slice", "gather", "slice-start"}
# Bytes each device sends per byte of (operand, result), ring algorithms over large groups.
_ICI_FACTORS = {"all-reduce": (2, 0), "all-gather": (0, 1), "reduce-scatter": (1, 0), "all-to-all": (1, 0),
                "collective-permute": (1, 0)}


@dataclasses.dataclass(frozen=True)
class Array:
    dtype: str
    dims: tuple[int, ...]
    memory_space: int  # 0: HBM

    @property
    def bytes(self) -> float:
        return _BYTES_PER_ELEMENT.get(self.dtype, 1) * math.prod(self.dims)


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    arrays: tuple[Array, ...]  # the result's arrays (several for a tuple)
    opcode: str
    operands: tuple[str, ...]
    arguments: str  # the text between the opcode's parentheses
    attributes: str  # the text after them
    is_root: bool

    def called(self, key: str) -> list[str]:
        """Computations an attribute names (`body=%b`, `branch_computations={%a, %b}`, ...)."""
        match = re.search(rf"\b{key}=(\{{[^}}]*\}}|%[\w.\-]+)", self.attributes)
        return _NAME.findall(match.group(1)) if match else []


@dataclasses.dataclass(frozen=True)
class Loop:
    body: str
    trip_count: int | None  # None: data-dependent (its body is counted once)


@dataclasses.dataclass(frozen=True)
class StepTraffic:
    hbm_bytes: float
    ici_bytes: dict[str, float]
    loops: tuple[Loop, ...]


def _split_type(text: str) -> tuple[str, str]:
    """'TYPE opcode(...)...' -> (TYPE, rest); a tuple type holds spaces inside brackets only."""
    depth = 0
    for i, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == " " and depth == 0:
            return text[:i], text[i + 1:]
    return text, ""


def _closing(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _arrays(type_text: str) -> tuple[Array, ...]:
    out = []
    for dtype, dims, layout in _ARRAY.findall(type_text):
        space = _MEMORY_SPACE.search(layout)
        out.append(Array(dtype, tuple(int(d) for d in dims.split(",") if d),
                         int(space.group(1)) if space else 0))
    return tuple(out)


def parse(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
    """{computation name: its instructions} and the entry computation's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():
            match = _COMPUTATION.match(line)
            current = match.group(2) if match and line.rstrip().endswith("{") else None
            if current is not None:
                computations[current] = []
                entry = current if match.group(1) else entry
            continue
        match = _INSTRUCTION.match(line)
        if current is None or not match:
            continue
        type_text, rest = _split_type(match.group(3))
        open_at = rest.find("(")
        if open_at < 0:
            continue
        close_at = _closing(rest, open_at)
        arguments = rest[open_at + 1:close_at]
        computations[current].append(Instruction(
            name=match.group(2), arrays=_arrays(type_text), opcode=rest[:open_at],
            operands=tuple(_NAME.findall(arguments)), arguments=arguments,
            attributes=rest[close_at + 1:], is_root=bool(match.group(1))))
    if not entry:
        raise ValueError("the HLO text has no ENTRY computation")
    return computations, entry


def _hbm(arrays) -> float:
    return sum(a.bytes for a in arrays if a.memory_space == 0)


def _results(instruction: Instruction) -> tuple[Array, ...]:
    """The arrays an instruction produces; async `-start` tuples also carry their operands first."""
    arrays = instruction.arrays
    if instruction.opcode.endswith("-start") and len(arrays) > len(instruction.operands):
        return arrays[len(instruction.operands):]
    return arrays


class _Walker:
    def __init__(self, computations: dict[str, list[Instruction]]):
        self.computations = computations
        self.by_name = {name: {i.name: i for i in body} for name, body in computations.items()}
        self.users: dict[str, dict[str, list[Instruction]]] = {}
        self.parameters: dict[str, dict[int, str]] = {}
        for name, body in computations.items():
            users: dict[str, list[Instruction]] = {}
            for instruction in body:
                for operand in instruction.operands:
                    users.setdefault(operand, []).append(instruction)
            self.users[name] = users
            self.parameters[name] = {int(i.arguments): i.name for i in body
                                     if i.opcode == "parameter" and i.arguments.isdigit()}
        self.loops: list[Loop] = []

    def trip_count(self, condition: str) -> int | None:
        root = next((i for i in self.computations[condition] if i.is_root), None)
        if root is None or root.opcode != "compare" or len(root.operands) != 2:
            return None
        lhs, rhs = (self.by_name[condition].get(name) for name in root.operands)
        direction = re.search(r"direction=(\w+)", root.attributes)
        bound = {"LT": rhs, "GT": lhs}.get(direction.group(1) if direction else "")
        if bound is None or bound.opcode != "constant" or not re.fullmatch(r"-?\d+", bound.arguments):
            return None
        return int(bound.arguments)

    def read_bytes(self, computation: str, value: str, full: float, depth: int = 0) -> float:
        """Bytes of `value` (a parameter of a fused computation, `full` bytes) that its users read:
        slices read their result, nested fusions what they read of it, anything else all of it."""
        read = 0.0
        for user in self.users[computation].get(value, []):
            if user.opcode in _SLICES and user.operands[0] == value:
                read += sum(a.bytes for a in user.arrays)
            elif user.opcode in ("bitcast", "reshape") and depth < 8:
                read += self.read_bytes(computation, user.name, full, depth + 1)
            elif user.opcode == "fusion" and depth < 8 and user.called("calls"):
                inner = user.called("calls")[0]
                for index, name in enumerate(user.operands):
                    if name == value and index in self.parameters[inner]:
                        read += self.read_bytes(inner, self.parameters[inner][index], full, depth + 1)
            else:
                return full
            if read >= full:
                return full
        return read

    def fusion_bytes(self, fusion: Instruction, operands: list[Instruction | None]) -> float:
        called = fusion.called("calls")
        if not called or called[0] not in self.computations:
            return sum(_hbm(_results(o)) for o in operands if o is not None) + _hbm(fusion.arrays)
        body, names = called[0], self.by_name[called[0]]
        read = [0.0] * len(operands)
        for index, operand in enumerate(operands):
            if operand is not None and index in self.parameters[body]:
                full = _hbm(_results(operand))
                read[index] = self.read_bytes(body, self.parameters[body][index], full) if full else 0.0
        # Results: an in-place dynamic-update-slice of a parameter writes only its update.
        root = next((i for i in self.computations[body] if i.is_root), None)
        is_tuple = root is not None and root.opcode == "tuple"
        elements = [names.get(n) for n in root.operands] if is_tuple else [root]
        written = 0.0
        for element, array in zip(elements, fusion.arrays, strict=False):
            while element is not None and element.opcode == "bitcast":
                element = names.get(element.operands[0])
            if array.memory_space != 0:
                continue
            if element is not None and element.opcode == "dynamic-update-slice":
                buffer, update = (names.get(n) for n in element.operands[:2])
                while buffer is not None and buffer.opcode == "bitcast":
                    buffer = names.get(buffer.operands[0])
                if buffer is not None and buffer.opcode == "parameter" and update is not None:
                    read[int(buffer.arguments)] = 0.0
                    written += sum(a.bytes for a in update.arrays)
                    continue
            written += array.bytes
        return sum(read) + written

    def instruction_bytes(self, instruction: Instruction, operands: list[Instruction | None]) -> float:
        if instruction.opcode == "fusion":
            return self.fusion_bytes(instruction, operands)
        results = _hbm(_results(instruction))
        if instruction.opcode in _SLICES:
            return 2 * results
        if instruction.opcode == "dynamic-update-slice" and len(operands) > 1 and operands[1] is not None:
            return 2 * _hbm(_results(operands[1]))
        return sum(_hbm(_results(o)) for o in operands if o is not None) + results

    def cost(self, computation: str) -> tuple[float, dict[str, float]]:
        """(HBM bytes, ICI bytes by kind) of one execution of `computation`."""
        names = self.by_name[computation]
        hbm, ici = 0.0, {}

        def add(scale: float, part: tuple[float, dict[str, float]]) -> None:
            nonlocal hbm
            hbm += scale * part[0]
            for kind, value in part[1].items():
                ici[kind] = ici.get(kind, 0.0) + scale * value

        for instruction in self.computations[computation]:
            opcode = instruction.opcode
            if opcode == "while":
                trip = self.trip_count(instruction.called("condition")[0])
                body = instruction.called("body")[0]
                self.loops.append(Loop(body=body, trip_count=trip))
                add(1 if trip is None else trip, self.cost(body))
            elif opcode == "conditional":
                branches = (instruction.called("branch_computations")
                            or instruction.called("true_computation")
                            + instruction.called("false_computation"))
                if branches:
                    add(1, max((self.cost(name) for name in branches), key=lambda part: part[0]))
            elif opcode == "call":
                for name in instruction.called("to_apply"):
                    add(1, self.cost(name))
            elif opcode not in _FREE and not opcode.endswith("-done"):
                operands = [names.get(name) for name in instruction.operands]
                hbm += self.instruction_bytes(instruction, operands)
                for kind, sent in self.collectives(computation, instruction, fused=False):
                    ici[kind] = ici.get(kind, 0.0) + sent
        return hbm, ici

    def collectives(self, computation: str, instruction: Instruction, fused: bool):
        """(kind, bytes sent) of the collective `instruction` is, or of those in the fusion it calls:
        the TPU compiler fuses collectives with their neighbours (`async_collective_fusion`), and
        an all-reduce in a fusion that only slices its result is its reduce-scatter
        (`all-reduce-scatter`): each device sends the operand once, not twice."""
        if instruction.opcode == "fusion":
            for inner in instruction.called("calls"):
                for nested in self.computations.get(inner, []):
                    yield from self.collectives(inner, nested, fused=True)
            return
        kind = instruction.opcode.removesuffix("-start")
        if kind not in _ICI_FACTORS:
            return
        names = self.by_name[computation]
        operand_bytes = sum(sum(a.bytes for a in _results(names[name]))
                            for name in instruction.operands if name in names)
        if kind == "all-reduce" and fused and self.only_sliced(computation, instruction.name):
            yield "reduce-scatter", operand_bytes
            return
        per_operand, per_result = _ICI_FACTORS[kind]
        yield kind, per_operand * operand_bytes + per_result * sum(a.bytes for a in _results(instruction))

    def only_sliced(self, computation: str, value: str) -> bool:
        """Whether every use of `value` (through tuple elements) is a slice of it."""
        users = self.users[computation].get(value, [])
        return bool(users) and all(
            (user.opcode in _SLICES and user.operands[0] == value)
            or (user.opcode == "get-tuple-element" and self.only_sliced(computation, user.name))
            for user in users)


def step_traffic(hlo_text: str) -> StepTraffic:
    """HBM and ICI bytes of one execution of a compiled program, per device (module docstring)."""
    computations, entry = parse(hlo_text)
    walker = _Walker(computations)
    hbm, ici = walker.cost(entry)
    return StepTraffic(hbm_bytes=hbm, ici_bytes=ici, loops=tuple(walker.loops))

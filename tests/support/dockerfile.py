"""The project's Dockerfile read as instructions, stage by stage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "deploy" / "Dockerfile"


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    value: str


def instructions(text: str) -> Iterator[Instruction]:
    """A Dockerfile's instructions, with continuation lines joined and comments dropped."""
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, value = (pending + line).strip().partition(" ")
        pending = ""
        yield Instruction(keyword.upper(), value.strip())


def build_stages() -> list[list[Instruction]]:
    """The build stages, each from its FROM on, with global ARGs substituted into FROM."""
    arguments: dict[str, str] = {}
    found: list[list[Instruction]] = []
    for instruction in instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "ARG" and not found:
            name, _, default = instruction.value.partition("=")
            arguments[name] = default
        elif instruction.keyword == "FROM":
            value = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: arguments[m[1] or m[2]], instruction.value)
            found.append([Instruction("FROM", value)])
        else:
            assert found, f"{instruction.keyword} before FROM"
            found[-1].append(instruction)
    return found

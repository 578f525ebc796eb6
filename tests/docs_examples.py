"""The runnable shell examples of README.md and docs/: parsed, run in order in one shell, and compared.

A runnable example is a fenced block with the info string `console`. In it, a line that starts with `$ `
is a command (a trailing backslash continues it on the next line), and the lines after it, up to the
next command, are what it prints. Blocks marked otherwise (`sh`: `make run`, compose, training) are
not run.

Expected output is compared with what the command printed, line by line, where `…` stands for any
text within a line (ids, digests, times); long JSON is shown through `python3 -m json.tool`. A command
with no expected output must print nothing. Every command must exit 0; commands run in one
bash session, in document order, so `ID=$(…)` sets a variable for the lines after it.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```console\s*$\n(.*?)^```\s*$", re.M | re.S)
ANY = "…"


@dataclass
class Example:
    doc: str
    line: int  # 1-based line of the command in its document
    command: str
    expected: list[str] = field(default_factory=list)

    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(text: str, doc: str) -> list[Example]:
    """Every `$ command` of the document's console blocks, with the output lines that follow it."""
    examples: list[Example] = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        i = 0
        while i < len(lines):
            if not lines[i].startswith("$ "):
                if not examples or examples[-1].doc != doc or examples[-1].line < first_line:
                    raise ValueError(f"{doc}:{first_line + i}: output before any command in a console block")
                examples[-1].expected.append(lines[i])
                i += 1
                continue
            start, command = i, lines[i][2:]
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command += "\n" + lines[i]  # bash reads the backslash-newline as a continuation
            examples.append(Example(doc, first_line + start, command))
            i += 1
    return examples


def matches(expected: list[str], actual: str) -> bool:
    want = expected
    got = actual.rstrip("\n").split("\n") if actual.strip() else []
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        pattern = ".*".join(re.escape(part) for part in w.rstrip().split(ANY))
        if not re.fullmatch(pattern, g.rstrip("\r").rstrip()):
            return False
    return True


@dataclass
class Outcome:
    example: Example
    status: int
    output: str

    @property
    def ok(self) -> bool:
        return self.status == 0 and matches(self.example.expected, self.output)

    def report(self) -> str:
        want = "\n".join(self.example.expected) or "(nothing)"
        return (
            f"{self.example.where()}: $ {self.example.command}\n"
            f"  exit status {self.status}\n  printed:\n{self.output or '(nothing)'}\n  the doc shows:\n{want}"
        )


def run(examples: list[Example], cwd: Path, env: dict[str, str], rewrite=lambda s: s, timeout: float = 300):
    """Run the commands in order in one bash session; each one's output lies between two markers."""
    begin, end = (f"__{name}_{uuid.uuid4().hex}__" for name in ("begin", "end"))
    script = "".join(f"echo {begin}\n{rewrite(e.command)}\nprintf '\\n{end} %s\\n' $?\n" for e in examples)
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc"],
        input=script,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
    found = re.findall(rf"{begin}\n(.*?)\n{end} (\d+)\n", proc.stdout, re.S)
    outcomes = [Outcome(e, int(status), rewrite(out)) for e, (out, status) in zip(examples, found, strict=False)]
    if len(outcomes) < len(examples):
        outcomes.append(Outcome(examples[len(outcomes)], -1, f"the shell stopped here:\n{proc.stderr[-2000:]}"))
    return outcomes

"""Runs the Python code of documentation pages, top to bottom, as a reader would.

    python docs/pages.py docs/tutorials/backprop-by-hand.md [README.md ...]

Each page's ```python blocks run in order in one namespace (one per page), in the
current directory. A ```text block that follows a python block with nothing but
blank lines between is what that block prints: the printed text must match it,
numbers to within one unit of their last printed digit (so a last digit that
rounds the other way on another CPU passes, a wrong value does not), everything
else exactly, up to runs of whitespace. A block right after the line
`<!-- docs: skip -->` is shown but not run. Tracebacks name the page and its
line numbers. Exit status 0 when every page ran clean, 1 otherwise.

    python docs/pages.py --update PAGE.md ...

writes what each block printed into its existing ```text block instead of
comparing: for a page you have just written, after checking the numbers by eye.

tests/test_docs.py runs every page this way, each in a fresh interpreter, so a
page may set JAX flags (x64, forced host devices) before it imports jax.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
import time
import traceback
from pathlib import Path

FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
SKIP = "<!-- docs: skip -->"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language, text and first code line."""

    lang: str
    code: str
    line: int  # 1-based line of the block's first code line in the page
    skip: bool = False
    output: str | None = None  # the ```text block that shows what it prints
    output_line: int = 0  # 1-based line of that block's first line


def blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown page, python blocks with their output."""
    lines = text.splitlines()
    found: list[Block] = []
    i, after_last = 0, 0  # after_last: the line after the previous block
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or not match.group(1):
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not FENCE.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"line {i + 1}: a ``` fence is never closed")
        lang, code = match.group(1), "\n".join(lines[i + 1 : end])
        above = [s.strip() for s in lines[after_last:i] if s.strip()]
        if lang == "text" and found and found[-1].lang == "python" and not above:
            found[-1] = dataclasses.replace(found[-1], output=code, output_line=i + 2)
        else:
            skip = bool(above) and above[-1] == SKIP
            found.append(Block(lang, code, i + 2, skip))
        i = after_last = end + 1
    return found


def _unit(token: str) -> float:
    """One unit in the last printed digit of a number token."""
    mantissa, _, exponent = token.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (int(exponent or 0) - decimals)


def same_output(printed: str, expected: str) -> str | None:
    """None if `printed` matches `expected`, else what differs."""

    def skeleton(text: str) -> str:
        return " ".join(NUMBER.sub("#", text).split())

    if skeleton(printed) != skeleton(expected):
        return f"the text differs:\n--- printed\n{printed}\n--- page\n{expected}"
    for got, want in zip(NUMBER.findall(printed), NUMBER.findall(expected)):
        if abs(float(got) - float(want)) > _unit(want) * (1 + 1e-9):
            return f"printed {got} where the page shows {want}"
    return None


def run_page(path: Path, out=sys.stdout, update: bool = False) -> bool:
    """Runs one page's python blocks; prints what fails. True if all ran clean.
    With `update`, rewrites the page's output blocks with what was printed. Each
    block's wall time goes to stderr."""
    text = path.read_text(encoding="utf-8")
    namespace: dict = {"__name__": "__main__"}
    outputs: dict[int, str] = {}  # output_line -> printed text
    ok = True
    for block in blocks(text):
        if block.lang != "python" or block.skip:
            continue
        # Padding puts the code on its page line numbers in tracebacks.
        source = "\n" * (block.line - 1) + block.code
        printed = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(source, str(path), "exec"), namespace)
        except BaseException:  # noqa: BLE001 - report any failure with its page line
            out.write(printed.getvalue())
            out.write(f"{path}:{block.line}: the block failed\n")
            out.write(traceback.format_exc())
            ok = False
            break
        out.write(printed.getvalue())
        took = time.perf_counter() - start
        print(f"{path.name}:{block.line}: {took:.1f} s", file=sys.stderr)
        if block.output is None:
            continue
        outputs[block.output_line] = printed.getvalue()
        problem = None if update else same_output(printed.getvalue(), block.output)
        if problem:
            out.write(f"{path}:{block.line}: the output {problem}\n")
            ok = False
            break
    if update and outputs:
        _write_outputs(path, text, outputs)
    return ok


def _write_outputs(path: Path, text: str, outputs: dict[int, str]) -> None:
    lines = text.splitlines()
    for first in sorted(outputs, reverse=True):
        end = first - 1
        while not FENCE.match(lines[end]):
            end += 1
        lines[first - 1 : end] = outputs[first].rstrip("\n").splitlines()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    update = argv[0] == "--update"
    ok = True
    for name in argv[update:]:
        ok = run_page(Path(name).resolve(), update=update) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

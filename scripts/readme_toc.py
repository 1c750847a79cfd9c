"""Regenerate the table of contents between <!-- toc --> and <!-- /toc --> in README.md from its ## / ### headings.

    python scripts/readme_toc.py [README.md]
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

START, END = "<!-- toc -->", "<!-- /toc -->"


def anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def toc(text: str) -> str:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^(##|###) (.+)$", line)
        if m and m.group(2) != "Contents":
            indent = "  " if m.group(1) == "###" else ""
            lines.append(f"{indent}- [{m.group(2).replace('`', '')}](#{anchor(m.group(2))})")
    return "\n".join(["## Contents", "", *lines])


def main(path: str = "README.md") -> int:
    file = Path(path)
    text = file.read_text()
    if START not in text or END not in text:
        print(f"error: {path} has no {START} ... {END} block", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    file.write_text(f"{head}{START}\n{toc(text)}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))

#!/usr/bin/env python3
"""Fails when the crate's top-level modules import each other in a circle.

A top-level module is a file or folder directly under src/ (src/db.rs or src/db/). An edge
A -> B is any `crate::B` path in A's files (in `use` lines and in code), comments and string
literals left out. The graph must have no cycle: dependencies point one way (see src/lib.rs).
Prints the graph (`--graph`) or, on failure, every cycle's modules and the lines that make it.
"""

import re
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\bcrate::\{")


def top_module(path: Path) -> str | None:
    rel = path.relative_to(SRC)
    if rel.parts[0] in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def strip(text: str) -> str:
    """Blanks out comments, string and char literals in one pass (keeping line breaks, for line
    numbers), so that `crate::x` inside them is not taken for a path."""
    out, i, n = [], 0, len(text)
    raw = re.compile(r'r(#*)"')
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif (m := raw.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            close = '"' + m.group(1)
            j = text.find(close, m.end())
            j = n if j < 0 else j + len(close)
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.[^']*|[^'\\])'", text[i:i + 12]):
            i = text.index("'", i + 2 if text[i + 1] != "\\" else i + 3) + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def group_heads(text: str, start: int) -> list[str]:
    """The first path segment of each item of the `{…}` group that starts at `start`."""
    heads, depth, item = [], 0, ""
    for ch in text[start:]:
        if depth == 0 and ch in ",}":
            name = item.strip().split("::")[0].strip()
            if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                heads.append(name)
            item = ""
            if ch == "}":
                break
            continue
        depth += ch == "{"
        depth -= ch == "}"
        item += ch
    return heads


def edges() -> dict[str, dict[str, list[str]]]:
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for file in sorted(SRC.rglob("*.rs")):
        src = top_module(file)
        if src is None:
            continue
        graph[src]  # every module is a node, even one that imports nothing
        text = strip(file.read_text())
        found = []
        for m in PATH.finditer(text):
            found.append((m.start(), m.group(1)))
        for g in GROUP.finditer(text):  # crate::{a::{x, y}, b} names several modules at once
            for name in group_heads(text, g.end()):
                found.append((g.start(), name))
        for pos, dst in found:
            if dst != src and dst != "self":
                line = text.count("\n", 0, pos) + 1
                graph[src][dst].append(f"{file.relative_to(SRC.parent)}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    graph = edges()
    if "--graph" in sys.argv:
        for src in sorted(graph):
            print(f"{src} -> {', '.join(sorted(graph[src])) or '(nothing)'}")
    bad = cycles(graph)
    for comp in bad:
        print(f"import cycle between top-level modules: {', '.join(comp)}", file=sys.stderr)
        for a in comp:
            for b in comp:
                if b in graph[a]:
                    print(f"  {a} -> {b}: {', '.join(graph[a][b][:3])}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

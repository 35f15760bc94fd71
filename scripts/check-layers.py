#!/usr/bin/env python3
"""Checks the node crate's structure; exits non-zero when it drifts.

1. No import cycle between the node's source files. An edge A -> B is a
   `crate::` or `super::` path in A (outside `#[cfg(test)]` modules and
   comments) that names an item of file B; `mod` declarations are not
   edges (a parent declares its children, it does not use them).
2. No file under `modules/` names `NodeState`: a module reaches the node
   only through the peer layer's handle, `peer::Peers`.
3. No module imports another module (`modules/X` never uses
   `modules/Y`, Y != X).

Usage: scripts/check-layers.py [crate-src-dir]   (default: the node's)
"""
import os
import re
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "openred-node", "src")
ROOT = os.path.normpath(ROOT)


def module_of(path):
    """`peer/frames.rs` -> ('peer', 'frames'); `peer/mod.rs` -> ('peer',)."""
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def strip(text):
    """The text without comments and without `#[cfg(test)] mod … { … }`."""
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def paths_in(text):
    """Every `a::b::{c, d::e}` path, expanded, as tuples of segments."""
    found = []

    def expand(prefix, body):
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(body):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(body[start:k])
                start = k + 1
        parts.append(body[start:])
        for part in parts:
            part = part.strip()
            if not part:
                continue
            m = re.match(r"([\w:]*?)::\{(.*)\}$", part, re.S)
            if m:
                expand(prefix + [s for s in m.group(1).split("::") if s], m.group(2))
            else:
                segs = [s for s in re.split(r"::", re.sub(r"\s+as\s+\w+$", "", part)) if s]
                found.append(tuple(prefix + segs))

    for m in re.finditer(r"\b((?:crate|super)(?:::(?:\w+|\{)))", text):
        # Take the path up to where it ends (balanced braces).
        start, k, depth = m.start(), m.start(), 0
        while k < len(text):
            ch = text[k]
            if ch == "{":
                depth += 1
            elif ch == "}":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and not (ch.isalnum() or ch in "_:"):
                break
            k += 1
        expand([], text[start:k])
    return found


files = {}
for dirpath, _, names in os.walk(ROOT):
    for name in names:
        if name.endswith(".rs"):
            path = os.path.join(dirpath, name)
            files[module_of(path)] = path
modules = set(files)


def resolve(here, segs):
    """The file a path's longest module prefix names."""
    if segs[0] == "crate":
        base, rest = (), list(segs[1:])
    else:
        base = here if os.path.basename(files[here]) == "mod.rs" else here[:-1]
        rest = list(segs)
        while rest and rest[0] == "super":
            rest.pop(0)
            base = base[:-1]
    target = base
    for seg in rest:
        if target + (seg,) in modules:
            target = target + (seg,)
        else:
            break
    return target if target in modules else None


edges = {m: set() for m in modules}
for here, path in files.items():
    text = strip(open(path, encoding="utf-8").read())
    for segs in paths_in(text):
        target = resolve(here, segs)
        if target is not None and target != here and target != ():
            edges[here].add(target)

name = lambda m: os.path.relpath(files[m], ROOT)
failures = []

# Tarjan's strongly connected components.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            sccs.append(scc)


sys.setrecursionlimit(10000)
for v in sorted(modules):
    if v not in index:
        visit(v)
for scc in sccs:
    members = set(scc)
    lines = [f"  {name(a)} -> {name(b)}" for a in sorted(scc) for b in sorted(edges[a]) if b in members]
    failures.append(f"an import cycle of {len(scc)} files:\n" + "\n".join(lines))

for m, path in sorted(files.items()):
    if m[:1] == ("modules",):
        text = strip(open(path, encoding="utf-8").read())
        if re.search(r"\bNodeState\b", text):
            failures.append(f"{name(m)} names NodeState (modules get peer::Peers)")
        for t in sorted(edges[m]):
            if len(m) > 1 and len(t) > 1 and t[0] == "modules" and t[1] != m[1]:
                failures.append(f"{name(m)} imports another module: {name(t)}")

if failures:
    print("check-layers: " + ROOT)
    print("\n".join(failures))
    sys.exit(1)
print(f"check-layers: {len(modules)} files, {sum(map(len, edges.values()))} imports, no cycle; modules name no NodeState and no other module")

"""The package's shape: every module imports alone, and no module imports one that imports it back
(counting imports inside functions too, since a lazy import is still a dependency)."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules():
    """{dotted name: path} of every module of the aft package."""
    found = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "aft")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, f)
    return found


def imports_of(path, known):
    """The aft modules a file imports anywhere in it (`from aft.x import y` is aft.x.y when that is
    a module, else aft.x)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(known)
            out |= subs or {node.module}
            if len(subs) < len(node.names):  # some names are attributes of the module itself
                out.add(node.module)
    return out


def test_no_module_imports_one_that_imports_it_back():
    known = modules()
    graph = {m: imports_of(p, known) - {m} for m, p in known.items()}
    cycles = []

    def visit(m, stack, on_stack, done):
        on_stack.add(m)
        stack.append(m)
        for n in sorted(graph[m]):
            if n in on_stack:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in done:
                visit(n, stack, on_stack, done)
        stack.pop()
        on_stack.discard(m)
        done.add(m)

    done = set()
    for m in sorted(graph):
        if m not in done:
            visit(m, [], set(), done)
    assert len(known) > 20 and not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports_alone(module):
    out = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]

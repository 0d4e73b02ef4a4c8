"""The package's shape: every module imports alone, and no module imports one that imports it back
(counting imports inside functions too, since a lazy import is still a dependency)."""
import ast
import json
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


# One Python imports the third-party libraries, none of aft; then a fork of it per module imports that
# module first of the package, as a fresh interpreter would (the libraries' 5 s are paid once).
IMPORT_EACH = r"""
import importlib, json, os, sys, traceback
for lib in ("numpy", "torch", "torchvision", "timm", "transformers", "PIL.Image", "absl.flags", "datasets"):
    importlib.import_module(lib)
assert not [m for m in sys.modules if m.split(".")[0] == "aft"]
for module in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 2)
        try:
            importlib.import_module(module)
            code = 0
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        err = f.read()
    print(json.dumps([module, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), err]), flush=True)
"""


@pytest.fixture(scope="module")
def imported_alone():
    """{module: (exit status, stderr)} of importing each module of aft alone."""
    out = subprocess.run([sys.executable, "-c", IMPORT_EACH, *sorted(modules())], cwd=ROOT, capture_output=True,
                         text=True, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return {m: (code, err) for m, code, err in map(json.loads, out.stdout.splitlines())}


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports_alone(imported_alone, module):
    code, err = imported_alone[module]
    assert code == 0, err[-2000:]

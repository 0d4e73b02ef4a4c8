"""The project as a package: everything the code imports is declared in pyproject.toml, the
requirements files install the same names with the same floors, and the installed `aft` works from
any folder (`python -m aft.results` outside the checkout)."""
import ast
import importlib.metadata
import os
import re
import subprocess
import sys

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from tests.conftest import ROOT
from tests.test_results import write_result

# The code whose imports the dependencies and the extras but `test` must provide; the tests' imports
# may also come from the extra `test`.
RUNTIME_CODE = ["aft", "run.py", "save_features.py", "logme.py", "benchmarks"]
TEST_CODE = ["tests"]


def read(path):
    with open(path) as f:
        return f.read()


def pyproject():
    """pyproject.toml's dependencies and its extras {name: [requirement, ...]}."""
    project = tomllib.loads(read(os.path.join(ROOT, "pyproject.toml")))["project"]
    return project.get("dependencies", []), project.get("optional-dependencies", {})


def canonical(name):
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split_requirement(line):
    """'name>=1; marker' -> (canonical name, '>=1;marker'): the version and marker part without spaces
    and with one kind of quote, so that a pyproject entry and a requirements line compare equal."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group()
    return canonical(name), line[len(name):].replace("'", '"').replace(" ", "")


def declared(specs):
    return dict(split_requirement(s) for s in specs)


def requirements(filename):
    """{name: version and marker} of a requirements file, without its options (`-r` includes)."""
    lines = [line.split("#")[0].strip() for line in read(os.path.join(ROOT, filename)).splitlines()]
    return declared(line for line in lines if line and not line.startswith("-"))


def python_files(parts):
    for part in parts:
        path = os.path.join(ROOT, part)
        if path.endswith(".py"):
            yield path
        for folder, _, files in os.walk(path):
            yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))


def imported_modules(parts):
    """{top-level module: a file importing it} over the code in `parts`, leaving out the standard
    library and the project's own modules (a package or file beside the root or the importer)."""
    found = {}
    for path in python_files(parts):
        for node in ast.walk(ast.parse(read(path), path)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                local = any(os.path.exists(os.path.join(folder, top + ext)) for folder in (ROOT, os.path.dirname(path))
                            for ext in ("", ".py"))
                if top not in sys.stdlib_module_names and not local:
                    found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def undeclared(modules, names):
    """The modules of `modules` that no distribution in `names` provides, each with a file importing it
    and the distributions it comes from. A module not installed here is taken to come from the
    distribution of its own name."""
    owners = importlib.metadata.packages_distributions()
    return sorted(f"{module} ({path}): from {owners.get(module, [module])}" for module, path in modules.items()
                  if not {canonical(d) for d in owners.get(module, [module])} & set(names))


def test_every_import_is_declared():
    dependencies, extras = pyproject()
    runtime = set(declared(dependencies))
    optional = {name for extra, specs in extras.items() if extra != "test" for name in declared(specs)}
    # The code's imports: by the dependencies, or by an extra the code names when it is missing.
    assert undeclared(imported_modules(RUNTIME_CODE), runtime | optional) == []
    assert undeclared(imported_modules(TEST_CODE), runtime | optional | set(declared(extras.get("test", [])))) == []
    for extra in optional:
        hint = f"pip install {extra}"
        assert any(hint in read(p) for p in python_files(["aft"])), f"nothing in aft/ says `{hint}`"


def test_requirements_agree_with_pyproject():
    dependencies, extras = pyproject()
    runtime = declared(dependencies)
    optional = {k: v for extra, specs in extras.items() if extra != "test" for k, v in declared(specs).items()}
    installed = requirements("requirements.txt")
    nodeps = requirements("requirements-nodeps.txt")
    assert not set(installed) & set(nodeps)
    assert set(installed) | set(nodeps) == set(runtime) | set(optional)
    # The same floors, except torch and torchvision, which requirements.txt pins to a build that
    # pyproject's floor admits.
    for name in ("torch", "torchvision"):
        pin, floor = installed.pop(name), runtime.pop(name)
        assert pin.startswith("==") and floor.startswith(">=")
        version = [int(x) for x in pin[2:].split(".")]
        assert version >= [int(x) for x in floor[2:].split(".")], (name, pin, floor)
    assert {**installed, **nodeps} == {**runtime, **optional}

    assert "-r requirements.txt" in read(os.path.join(ROOT, "requirements-test.txt")).splitlines()
    assert requirements("requirements-test.txt") == declared(extras.get("test", []))


def test_installed_package_runs_from_another_folder(tmp_path):
    """`python -m aft.results` from a folder outside the checkout, with nothing on PYTHONPATH: the
    editable install (setup.sh) makes `aft` this checkout's package wherever the command runs."""
    for seed, acc in enumerate([0.70, 0.74]):
        write_result(tmp_path / "results", "A", "aft", 10, seed, acc)
    write_result(tmp_path / "results", "A", "init", 0, 0, 0.60)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([sys.executable, "-c", "import aft; print(aft.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip() == os.path.join(ROOT, "aft", "__init__.py")

    out = subprocess.run([sys.executable, "-m", "aft.results", "results", "--chosen"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n") == ["init 0 0.001", "aft 10 0.001", ""]

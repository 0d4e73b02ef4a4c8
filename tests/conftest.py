import os
import shutil
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def _start_forkserver():
    """PYTHON: a Python for the tests' script commands that starts in milliseconds (tests/forkserver.py:
    the command runs in a fork of one process that imported torch once). sys.executable stays the real
    interpreter, for the tests about a real process. Until the server listens, PYTHON is a real one."""
    import atexit
    import subprocess
    import tempfile
    import forkserver
    if os.environ.get("AFT_TESTS_NO_FORKSERVER"):
        return sys.executable
    if os.environ.get(forkserver.SOCKET_VARIABLE):  # this file imported again, or an xdist worker: share it
        return os.environ.get("PYTHON", sys.executable)
    folder = tempfile.mkdtemp(prefix="aft-forkserver-")
    path = os.path.join(folder, "socket")
    with open(os.path.join(folder, "log"), "w") as log:
        server = subprocess.Popen([sys.executable, forkserver.__file__, "serve", path], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log)
    os.environ[forkserver.SOCKET_VARIABLE] = path

    def stop():
        server.terminate()
        server.wait()
        shutil.rmtree(folder, ignore_errors=True)

    atexit.register(stop)
    return forkserver.client_script(sys.executable, os.path.join(folder, "python"))


PYTHON = _start_forkserver()
os.environ["PYTHON"] = PYTHON  # what the example scripts run

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # each xdist process its share of the cores, set once:
    import torch  # more OpenMP threads than cores spin against each other, many times slower
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_terminal_summary(terminalreporter):
    """Which commands ran in a real Python instead (slower, as right), and why: the server's log."""
    log = os.path.join(os.path.dirname(PYTHON), "log")
    lines = open(log).read().splitlines() if PYTHON != sys.executable and os.path.exists(log) else []
    if lines:
        terminalreporter.write_sep("-", f"forkserver: {len(lines)} commands ran in a real Python")
        for line in sorted(set(lines))[:10]:
            terminalreporter.write_line(line)

# torch.compile on a CPU: Inductor builds C++ against Python's headers.
needs_cpp_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    reason="torch.compile on a CPU needs a C++ compiler and Python's headers: apt install g++ python3-dev")


def pixels(images):
    """The uint8 pictures of a split's inputs, in memory (decoded sets keep them on disk)."""
    return images.load() if hasattr(images, "load") else images


def visible(folder):
    """The names in `folder` but hidden ones (locks), sorted."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


@pytest.fixture
def cfg():
    from aft.config import Config
    return Config()


@pytest.fixture
def demo_features(tmp_path):
    """A features folder holding random 'all-MiniLM-L6-v2' features of the tweets, in the cache's
    format and shape (and its meta's description of them): the demo's path runs without the 5-minute
    extraction."""
    import torch
    from aft.datasets import load_task
    from aft.features import expected_features, make_meta, write_features
    task = load_task("tweets")
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(len(task.train), 384, generator=g), torch.randn(len(task.test), 384, generator=g)
    write_features(str(tmp_path / "features" / "all-MiniLM-L6-v2_tweets.pt"), train, test,
                   make_meta("all-MiniLM-L6-v2", "tweets", train, test, features=expected_features("all-MiniLM-L6-v2")))
    return tmp_path / "features"

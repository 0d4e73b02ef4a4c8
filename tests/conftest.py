import os
import shutil
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("WANDB_MODE", "disabled")

# torch.compile on a CPU: Inductor builds C++ against Python's headers.
needs_cpp_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++"))
    or not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")),
    reason="torch.compile on a CPU needs a C++ compiler and Python's headers: apt install g++ python3-dev")


@pytest.fixture
def cfg():
    from aft.train import Config
    return Config()

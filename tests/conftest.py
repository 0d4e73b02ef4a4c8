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

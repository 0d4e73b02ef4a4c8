"""The commands of the paper's README, verbatim, run offline: each parses and runs up to the first
thing that needs the network, then stops with one clear line on stderr and exit status 2 (no
traceback, nothing downloaded). With the data present (a stand-in CIFAR-10 of the torchvision
interface), the run.py command goes on to the pre-trained features, and with those present to the
student's pre-trained weights: each time the next missing download is what it names.
"""
import os
import stat
import subprocess

import numpy as np
import pytest
import torch

from aft.datasets import load_task
from aft.errors import UserError
from aft.features import make_meta, write_features
from aft.models import PAPER_MODELS, resolve_model
from tests.conftest import PYTHON, ROOT
from tests.test_paper_datasets import PAPER_DATASETS

# The README's shell blocks, character for character.
RUN_COMMAND = """method=aft
ds=cifar10
pretrained_models=vit_giant_patch14_dinov2.lvd142m,vit_giant_patch14_clip_224.laion2b
model=vit_small_patch16_224.augreg_in1k
lr=1e-4
prec=10
seed=0
python run.py \\
--seed=${seed} \\
--model_class=${model} \\
--init_model=${model} \\
--dataset=${ds} \\
--pretrained_models=${pretrained_models} \\
--train_frac=1 \\
--use_val=False \\
--method=${method} \\
--prec=${prec} \\
--learn_scales=True \\
--steps=5000 \\
--eval_steps=500 \\
--optimizer=adam \\
--batch_size=128 \\
--lr=${lr} \\
--wd=0 \\
--no_augment=True \\
--use_wandb=False
"""

SAVE_FEATURES_COMMAND = """pretrained_model=vit_giant_patch14_dinov2.lvd142m
dataset=cifar10
save_path="./features/${model}_${dataset}.pt"
python save_features.py \\
--model_class=${pretrained_model} \\
--dataset=${dataset} \\
--save_path=${save_path}
"""

LOGME_COMMAND = """dataset=cifar10
for model in vit_small_patch16_224.augreg_in1k vit_base_patch14_dinov2.lvd142m; do
    python logme.py \\
    --model_class=${model} \\
    --dataset=${dataset}
done;
"""


@pytest.fixture
def shell(tmp_path):
    """Run a README block with bash in a fresh folder holding the scripts, `python` being this
    interpreter, offline, with an empty data folder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "python"
    shim.write_text(f'#!/bin/sh\nexec "{PYTHON}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    work.mkdir()
    for script in ("run.py", "save_features.py", "logme.py"):
        if os.path.exists(os.path.join(ROOT, script)):
            os.symlink(os.path.join(ROOT, script), work / script)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONPATH=ROOT, HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               AFT_DATA_DIR=str(tmp_path / "data"))

    def run(block):
        return subprocess.run(["bash", "-c", block], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    run.work = work
    return run


def one_line_error(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_run_command_stops_at_the_missing_data(shell, tmp_path):
    line = one_line_error(shell(RUN_COMMAND))
    assert line.startswith("error: dataset cifar10 (torchvision CIFAR10) is not in ")
    assert str(tmp_path / "data" / "cifar-10-batches-py") in line and "download=True" in line
    assert not os.path.exists(tmp_path / "data")  # nothing downloaded, no folder made


@pytest.mark.slow
def test_save_features_command_stops_at_the_missing_data(shell):
    line = one_line_error(shell(SAVE_FEATURES_COMMAND))
    assert "dataset cifar10 (torchvision CIFAR10) is not in" in line
    assert not os.path.exists(shell.work / "features")


@pytest.mark.slow
def test_logme_loop_stops_at_the_missing_data(shell):
    proc = shell(LOGME_COMMAND)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 2 and all("dataset cifar10 (torchvision CIFAR10) is not in" in line for line in lines)


@pytest.mark.slow
def test_unknown_model_lists_the_valid_ones(shell):
    proc = shell("python save_features.py --model_class=vit_tiny_cifar --dataset=digits")
    line = one_line_error(proc)
    # no timm name is spelled close enough to suggest one (a typo's "did you mean": tests/test_flags.py)
    assert "unknown model 'vit_tiny_cifar'; valid models: the embedded models " in line
    assert "README's Models lists the paper's" in line and len(line) < 400  # a line, not a list of thousands


# ---- past the data: a stand-in CIFAR-10 ----------------------------------------------------------

class StandInCIFAR10:
    """torchvision.datasets.CIFAR10's interface with 20 train and 10 test images."""

    def __init__(self, root, train=True, download=False, transform=None):
        assert download is False, "a test must never download"
        n = 20 if train else 10
        self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 10 for i in range(n)]
        self.classes = [str(i) for i in range(10)]


def paper_config(**overrides):
    """The README's run.py command as a Config (the flags above, parsed by run.py into these)."""
    from aft.config import Config
    values = dict(seed=0, model_class="vit_small_patch16_224.augreg_in1k", init_model="vit_small_patch16_224.augreg_in1k",
                  dataset="cifar10", pretrained_models="vit_giant_patch14_dinov2.lvd142m,vit_giant_patch14_clip_224.laion2b",
                  train_frac=1.0, use_val=False, method="aft", prec=10.0, steps=5000, eval_steps=500, optimizer="adam",
                  batch_size=128, lr=1e-4, wd=0.0, use_wandb=False,
                  method_args=dict(learn_scales=True, no_augment=True))
    values.update(overrides)
    return Config(**values)


@pytest.fixture
def cifar_present(monkeypatch, tmp_path):
    import torchvision
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", StandInCIFAR10)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_run_command_then_stops_at_the_teacher_weights(cifar_present, capsys):
    from aft.experiment import run
    with pytest.raises(UserError) as err:
        run(paper_config())
    message = str(err.value)
    assert "\n" not in message
    assert ("cannot load timm weights for 'vit_giant_patch14_dinov2.lvd142m' "
            "(timm/vit_giant_patch14_dinov2.lvd142m/pytorch_model.bin is not in the cache)") in message
    assert "HF_HUB_CACHE" in message and "HF_HUB_OFFLINE" in message
    assert "features ./features/vit_giant_patch14_dinov2.lvd142m_cifar10.pt not found: computing them now" in \
        capsys.readouterr().out
    assert not os.path.exists(cifar_present / "features" / "vit_giant_patch14_dinov2.lvd142m_cifar10.pt")


def test_run_command_with_cached_features_stops_at_the_student_weights(cifar_present):
    from aft.experiment import run
    for name, dim in (("vit_giant_patch14_dinov2.lvd142m", 1536), ("vit_giant_patch14_clip_224.laion2b", 1408)):
        train, test = torch.randn(20, dim), torch.randn(10, dim)
        write_features(f"./features/{name}_cifar10.pt", train, test, make_meta(name, "cifar10", train, test))
    with pytest.raises(UserError, match=r"^cannot load timm weights for 'vit_small_patch16_224.augreg_in1k' "
                                        r"\(timm/vit_small_patch16_224.augreg_in1k/pytorch_model.bin is not in the cache\)"):
        run(paper_config())


# ---- every name of the README and the paper -----------------------------------------------------------

def test_every_paper_model_is_accepted_and_names_its_download():
    """Each name of the README's model table resolves (right modality); offline, loading its weights
    is one line naming the model and the cache, at once (no billion random weights built first)."""
    modality = {"CLIP": "image_text"}
    for paper_name, name in PAPER_MODELS.items():
        spec = resolve_model(name)
        expected = modality.get(name, "text" if "/" in name or name.startswith(("gpt2", "distilbert")) else "image")
        assert spec.modality == expected, paper_name
        if name == "CLIP" and not _has("open_clip"):
            continue
        with pytest.raises(UserError) as err:  # CLIP is a downstream model only: built with its classes
            spec.build(pretrained=True, **({"num_classes": 3} if spec.downstream_only else {}))
        message = str(err.value)
        assert "\n" not in message and "HF_HUB_CACHE" in message and "HF_HUB_OFFLINE" in message, message
        assert (name if name != "CLIP" else "CLIP ResNet-50") in message
        if name.startswith("meta-llama/"):
            assert "gated" in message and "HF_TOKEN" in message


def test_every_paper_dataset_is_accepted_and_names_its_download(tmp_path):
    for name in PAPER_DATASETS:
        with pytest.raises(UserError) as err:
            load_task(name, str(tmp_path))
        message = str(err.value)
        assert "\n" not in message and "unknown dataset" not in message and f"dataset {name} " in message
        assert str(tmp_path) in message
    assert not os.listdir(tmp_path)


def _has(module):
    import importlib.util
    return importlib.util.find_spec(module) is not None

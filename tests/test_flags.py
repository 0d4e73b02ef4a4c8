"""The command line of run.py, save_features.py and logme.py: every bad value is one `error:` line
naming the flag (exit 2), given before anything is loaded or written, absl's own parse errors
included; an unknown flag is answered with the right name; --help lists the choices, and the
paper's flags before this tool's own; the paper's flags that change nothing here are accepted.

The bad values tests/test_reliability.py::test_bad_flag_is_one_line and
tests/test_cli.py::test_bad_input_is_one_line cover are not repeated.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace

import pytest

from aft.config import BOUNDS, Config
from aft.datasets import DATASETS
from aft.errors import UserError
from aft.methods import METHODS, hyperparameters
from aft.plan import make_plan
from tests.conftest import ROOT
from tests.test_cli import cli
from tests.test_reliability import STUDENT, error_line

BAD = [
    ("run.py", ["--lr=-1"], "--lr=-1.0 must be > 0"),
    ("run.py", ["--lr=nan"], "--lr=nan must be finite and > 0"),
    ("run.py", ["--prior_lr=-1"], "--prior_lr=-1.0 must be > 0"),
    ("run.py", ["--wd=-0.1"], "--wd=-0.1 must be >= 0"),
    ("run.py", ["--image_size=-5"], "--image_size=-5 must be >= 0"),
    ("run.py", ["--teacher_image_size=-1"], "--teacher_image_size=-1 must be >= 0"),
    ("run.py", ["--eval_batch_size=0"], "--eval_batch_size=0 must be > 0"),
    ("run.py", ["--extract_batch_size=-2"], "--extract_batch_size=-2 must be > 0"),
    ("run.py", ["--seed=-1"], "--seed=-1 must be >= 0"),
    ("run.py", ["--prior_freq=0"], "--prior_freq=0 must be > 0"),
    ("run.py", ["--prior_pretrain_steps=-1"], "--prior_pretrain_steps=-1 must be >= 0"),
    ("run.py", ["--optimizer=rmsprop"], "flag --optimizer=rmsprop: value should be one of <adam|sgd>"),
    ("run.py", ["--precision=fp16"], "flag --precision=fp16: value should be one of <auto|bf16|fp32>"),
    ("run.py", ["--steps=1e3"], "flag --steps=1e3: invalid literal for int() with base 10: '1e3'"),
    ("run.py", ["--lr"], "Missing value for flag --lr"),
    ("run.py", ["--beta=1"], "Unknown command line flag 'beta'. Did you mean: prec ?"),
    ("run.py", ["--stepz=3"], "Unknown command line flag 'stepz'. Did you mean: steps ?"),
    ("run.py", ["lr=0.1"], "unexpected argument 'lr=0.1': flags are written --name=value"),
    ("run.py", ["--method=kd", "--no_augment=False"],
     "--no_augment=False: augmentation is only for --method=init (the paper's code asserts it); drop --no_augment"),
    ("save_features.py", ["--num_workers=-1"], "--num_workers=-1 must be >= 0"),
    ("save_features.py", ["--image_size=-5"], "--image_size=-5 must be >= 0"),
    ("save_features.py", ["--precision=fp16"], "flag --precision=fp16: value should be one of <auto|bf16|fp32>"),
    ("save_features.py", ["--dataset=nope"], "unknown dataset 'nope'; valid datasets: aircraft, boolq,"),
    ("logme.py", ["--train_frac=nan"], "--train_frac=nan must be finite and in (0, 1]"),
    ("logme.py", ["--dataset=nope"], "unknown dataset 'nope'; valid datasets: aircraft, boolq,"),
    ("run.py", ["--dataset=digts"], "unknown dataset 'digts' (did you mean: digits?)"),
    ("run.py", ["--method=init", "--model_class=efficientnet_lit2"],
     "unknown model 'efficientnet_lit2' (did you mean: efficientnet_lite2"),
    ("run.py", ["--device=gpu"], "--device=gpu is no device here; valid: auto, cpu, cuda, cuda:N"),
    ("run.py", [*STUDENT, "--method=init", "--image_size=1"],
     "--image_size=1 is smaller than resnet10t can read: its first layer takes 2 x 2 pixels at a time"),
    ("run.py", [*STUDENT, "--method=init", "--batch_size=1"],
     "a batch of 1 row gives each step 1 row, and resnet10t's BatchNorm needs 2 or more in training; use "
     "--batch_size=2 or more"),
    ("run.py", [*STUDENT, "--method=init", "--train_frac=0.001"],
     "--train_frac=0.001 leaves 2 training rows of dataset digits; at least 10 are needed (one per class of its 10)"),
]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every BAD case run in its own empty folder, four at a time (each spends its seconds importing
    torch): [(process, folder)]."""
    folders = [tmp_path_factory.mktemp("bad") for _ in BAD]

    def attempt(case, folder):
        script, args, _ = case
        return cli(script, *args, cwd=folder, check=False), folder

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(attempt, BAD, folders))


@pytest.mark.slow
@pytest.mark.parametrize("case", range(len(BAD)), ids=[f"{s} {' '.join(a)}" for s, a, _ in BAD])
def test_bad_flag_is_one_line_before_anything_loads(bad_runs, case):
    proc, folder = bad_runs[case]
    line = error_line(proc)
    assert line.startswith(f"error: {BAD[case][2]}"), line
    assert os.listdir(folder) == []  # no features/, results/ or anything else


HYPER_BOUNDS = {f.name: f.metadata["bound"] for f in hyperparameters() if f.metadata["bound"]}


def test_every_numeric_flag_has_a_bound():
    numeric = {f.name for f in fields(Config) if type(f.default) in (int, float)}
    assert numeric == set(BOUNDS)
    assert {f.name for f in hyperparameters() if type(f.default) in (int, float)} == set(HYPER_BOUNDS) != set()


@pytest.mark.parametrize("flag", sorted(BOUNDS) + sorted(HYPER_BOUNDS))
def test_bounds_hold_from_python(flag):
    """aft.experiment.run checks them first (aft.plan): a value just outside each bound, as Python
    gives it, of a flag of the run or of a method's hyperparameter."""
    bound = BOUNDS.get(flag) or HYPER_BOUNDS[flag]
    outside, phrase = {"> 0": (0, "> 0"), ">= 0": (-1, ">= 0"), "(0, 1]": (0, "in (0, 1]")}[bound]
    if flag in BOUNDS:
        value = type(getattr(Config(), flag))(outside)
        cfg = replace(Config(), **{flag: value})
    else:
        value = type(next(f.default for f in hyperparameters() if f.name == flag))(outside)
        cfg = Config(method_args={flag: value})
    with pytest.raises(UserError) as err:
        make_plan(cfg)
    assert str(err.value).startswith(f"--{flag}={value} must be {phrase}")


PAPER_RUN = ["seed", "model_class", "init_model", "dataset", "pretrained_models", "train_frac", "use_val", "method",
             "prec", "learn_scales", "steps", "eval_steps", "optimizer", "batch_size", "lr", "wd", "no_augment",
             "use_wandb", "cache", "prior_freq", "prior_pretrain_steps"]
TOOL_RUN = ["features_dir", "data_dir", "out_dir", "device", "precision", "compile", "image_size", "eval_batch_size",
            "extract_batch_size", "resume", "wandb_project", "wandb_group"]


def where(text, flag):
    """Where --help describes `flag`."""
    found = [text.find(f"\n  --{prefix}{flag}:") for prefix in ("", "[no]")]
    assert max(found) >= 0, flag
    return max(found)


@pytest.mark.slow
@pytest.mark.parametrize("script, paper, tool", [
    ("run.py", PAPER_RUN, TOOL_RUN),
    ("save_features.py", ["model_class", "dataset", "batch_size", "num_workers", "save_path", "debug"],
     ["features_dir", "data_dir", "device", "precision", "image_size"]),
])
def test_help_lists_the_papers_flags_first(script, paper, tool):
    out = cli(script, "--help", cwd=ROOT, check=False)  # 1, as absl's help
    assert out.returncode == 1 and out.stderr == ""
    text = out.stdout
    paper_at, tool_at = text.find("\nthe paper's flags:\n"), text.find("\nthis tool's own flags:\n")
    assert 0 < paper_at < tool_at
    assert all(paper_at < where(text, f) < tool_at for f in paper), text
    assert all(tool_at < where(text, f) for f in tool), text
    assert "%%" not in text
    words = " ".join(text.split())  # absl wraps lines: a name cut in two would not be found
    assert ", ".join(DATASETS.names()) in words
    if script == "run.py":
        assert f"one of {', '.join(sorted(METHODS))}" in words
        assert "hold out 10% of train" in words
        assert "--lr: learning rate (cosine schedule over the run); > 0" in words


@pytest.mark.slow
def test_papers_run_flags_are_accepted(tmp_path):
    out = cli("run.py", *STUDENT, "--method=init", "--steps=2", "--eval_steps=2", "--run_name=paper", "--cache=True",
              "--prior_freq=1", "--prior_pretrain_steps=0", cwd=tmp_path)
    notes = [line for line in out.stdout.splitlines() if line.startswith("note: --")]
    assert [n.split(": ")[1] for n in notes] == ["--cache", "--prior_freq", "--prior_pretrain_steps"]
    assert "not used: the downstream model and AFT's scales are updated together at every step" in notes[1]
    assert (tmp_path / "results" / "paper.json").exists()


@pytest.mark.slow
def test_save_features_debug_saves_nothing(tmp_path):
    out = cli("save_features.py", "--model_class=efficientnet_lite2", "--dataset=digits", "--image_size=32",
              "--batch_size=8", "--debug", cwd=tmp_path)
    assert "debug: efficientnet_lite2 on 8 train and 8 test rows of digits: 1280 features per row, all finite; " \
           "nothing saved" in out.stdout
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="the OS sets no limit on a process's cores")
def test_num_workers_sets_the_decoding_threads():
    code = ("import save_features, torch; "
            "from aft.datasets.decode import workers; save_features.use_cores(1); "
            "print(workers(), torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1"]

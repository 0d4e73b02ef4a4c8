"""Data-parallel training: `torchrun --nproc_per_node=2 run.py ...` (gloo on the CPU) is the run that one
process makes at the same global batch: per-step losses equal for init, aft, kd and rkd (whose
regularisers couple the rows of a batch: each process's features are gathered, with gradients), the
same final accuracy, and a 2-process run killed and resumed ends as the uninterrupted one."""
import json
import os
import subprocess

import pytest
import torch

from aft.features import feature_path, make_meta, write_features
from aft.loop import CHECK_EVERY, KILL_AFTER_CHECKPOINT, SIGNAL_AT_STEP
from tests.conftest import PYTHON, ROOT

# A ViT (timm's test_vit) has neither dropout nor BatchNorm, so two processes can compute exactly
# what one does; 20 steps, a loss recorded at every one.
RUN = ["--dataset=digits", "--model_class=test_vit", "--image_size=32", "--pretrained_models=teacher",
       "--features_dir=features", "--steps=20", "--eval_steps=1", "--batch_size=16", "--lr=1e-3", "--prec=3",
       "--eval_batch_size=128"]


def launch(cwd, *args, nproc=1, kill=None, signal=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop(KILL_AFTER_CHECKPOINT, None)
    env.pop(SIGNAL_AT_STEP, None)
    if kill:
        env[KILL_AFTER_CHECKPOINT] = kill
    if signal:
        env[SIGNAL_AT_STEP] = signal
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([PYTHON, *launcher, os.path.join(ROOT, "run.py"), *RUN, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def results(cwd, name):
    with open(cwd / "results" / f"{name}.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with a random 'teacher' cache of digits (48 features a row)."""
    from aft.datasets import load_task
    folder = tmp_path_factory.mktemp("ddp")
    task = load_task("digits")
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(len(task.train), 48, generator=g), torch.randn(len(task.test), 48, generator=g)
    write_features(feature_path(str(folder / "features"), "teacher", "digits"), train, test,
                   make_meta("teacher", "digits", train, test))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("method", ["init", "aft", "kd", "rkd"])
def test_two_processes_compute_the_one_process_run(work, method):
    one = launch(work, f"--method={method}", f"--run_name={method}_one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(work, f"--method={method}", f"--run_name={method}_two", nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = results(work, f"{method}_one"), results(work, f"{method}_two")
    assert a["world_size"] == 1 and b["world_size"] == 2 and [e["step"] for e in b["evals"]] == list(range(1, 21))
    for key in ("loss", "ce", "reg"):
        torch.testing.assert_close(torch.tensor([e[key] for e in b["evals"]], dtype=torch.float64),
                                   torch.tensor([e[key] for e in a["evals"]], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    assert [e["acc"] for e in b["evals"]] == [e["acc"] for e in a["evals"]] and b["final_acc"] == a["final_acc"]
    if method != "init":
        assert all(e["reg"] > 0 for e in b["evals"])
    assert "final test accuracy" in two.stdout and two.stdout.count("final test accuracy") == 1  # rank 0 speaks


@pytest.mark.slow
def test_killed_two_process_run_resumes_to_the_uninterrupted_one(work):
    args = ["--method=aft", "--eval_steps=5", "--ckpt_dir=ckpt"]
    whole = launch(work, *args, "--run_name=whole", nproc=2)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = launch(work, *args, "--run_name=cut", nproc=2, kill="1:10")  # rank 1 dies after the step-10 checkpoint
    assert killed.returncode != 0 and not (work / "results" / "cut.json").exists()
    assert torch.load(work / "ckpt" / "cut.pt", weights_only=True)["step"] == 10
    resumed = launch(work, *args, "--run_name=cut", "--resume=True", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed cut from" in resumed.stdout and "at step 10" in resumed.stdout
    a, b = results(work, "whole"), results(work, "cut")
    assert [e["step"] for e in b["evals"]] == [5, 10, 15, 20]
    for x, y in zip(a["evals"], b["evals"]):
        assert x["acc"] == y["acc"] and x["loss"] == pytest.approx(y["loss"], rel=1e-6)


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(work):
    """SIGTERM to rank 1 after step 6: the processes agree on it at step 8 (every CHECK_EVERY steps), both
    stop there, rank 0 writes the checkpoint, and the run resumed ends as the uninterrupted one."""
    args = ["--method=aft", "--eval_steps=5", "--ckpt_dir=ckpt"]
    if not (work / "results" / "whole.json").exists():
        assert launch(work, *args, "--run_name=whole", nproc=2).returncode == 0
    stopped = launch(work, *args, "--run_name=sig", nproc=2, signal="SIGTERM:1:6")
    assert stopped.returncode != 0 and not (work / "results" / "sig.json").exists()
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("error: ")]
    assert lines and all(line.startswith("error: SIGTERM: stopped at step 8 of 20; checkpoint ckpt/sig.pt; resume "
                                         "with: the same torchrun command with --resume=True") for line in lines)
    assert CHECK_EVERY == 4 and torch.load(work / "ckpt" / "sig.pt", weights_only=True)["step"] == 8
    resumed = launch(work, *args, "--run_name=sig", "--resume=True", nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = results(work, "whole"), results(work, "sig")
    assert [e["step"] for e in b["evals"]] == [5, 10, 15, 20]
    for x, y in zip(a["evals"], b["evals"]):
        assert x["acc"] == y["acc"] and x["loss"] == pytest.approx(y["loss"], rel=1e-6)


@pytest.mark.slow
def test_a_global_batch_must_divide_among_the_processes(work):
    out = launch(work, "--method=aft", "--batch_size=15", "--run_name=odd", nproc=2)
    assert out.returncode != 0
    assert "error: --batch_size=15 is the batch of all 2 processes together and must divide evenly among them; " \
           "use a multiple of 2" in out.stderr


@pytest.mark.slow
def test_a_train_set_smaller_than_the_batch_is_shared_out_as_one_global_batch(work):
    """16 train rows under --batch_size=32: every step's global batch is those 16 rows, 8 on each process."""
    small = ["--method=aft", "--batch_size=32", "--train_frac=0.011"]
    one = launch(work, *small, "--run_name=small_one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch(work, *small, "--run_name=small_two", nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = results(work, "small_one"), results(work, "small_two")
    assert a["n_train"] == b["n_train"] == 16
    torch.testing.assert_close(torch.tensor([e["loss"] for e in b["evals"]], dtype=torch.float64),
                               torch.tensor([e["loss"] for e in a["evals"]], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    odd = launch(work, "--method=aft", "--batch_size=32", "--train_frac=0.01", "--run_name=small_odd", nproc=2)
    assert odd.returncode != 0 and not (work / "results" / "small_odd.json").exists()
    assert "error: the global batch is all 15 train rows (fewer than --batch_size) and must divide evenly among " \
           "the 2 processes; change --train_frac, or run on a number of processes that divides 15" in odd.stderr

"""Sweeps beyond one device: examples/grid.sh lists the runs of each phase of a beta sweep,
sweep_beta.sh with GPUS spreads them over devices and writes the files a sequential sweep writes,
a failed run fails its phase, and examples/slurm_sweep.sh (under a stand-in sbatch that runs the
jobs here) gives the same files, and submitted again runs only what is missing."""
import json
import os
import subprocess
import sys

import pytest
import torch

from aft.features import make_meta, write_features
from tests.conftest import ROOT

GRID = os.path.join(ROOT, "examples", "grid.sh")
SWEEP_BETA = os.path.join(ROOT, "examples", "sweep_beta.sh")
SLURM_SWEEP = os.path.join(ROOT, "examples", "slurm_sweep.sh")
ENV = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], HF_HUB_OFFLINE="1",
           WANDB_MODE="disabled", OMP_NUM_THREADS="1", DATASET="digits", MODEL="resnet10t", INIT_MODEL="",
           PRETRAINED="teacher", METHODS="init", SEEDS="0 1", BETAS="1", STEPS="2", EVAL_STEPS="2",
           BATCH_SIZE="32", EXTRA="--image_size=16 --device=cpu")
for _name in ("GPUS", "OUT", "CKPT_DIR", "AFT_ROOT", "SBATCH_ARGS", "GPU_ARGS", "CUDA_VISIBLE_DEVICES"):
    ENV.pop(_name, None)  # the sweeps' own settings come from each test, never from the caller's shell
OUT = "results/sweep_digits_resnet10t"

# A stand-in for Slurm's sbatch: records its arguments, runs the job at once (an array's tasks one
# after another, with SLURM_ARRAY_TASK_ID set; a failed task fails the submission, as afterok would
# hold the dependent jobs; a task that requeued itself, through a stand-in scontrol that lists it in
# $STUB_DIR/requeued, runs again) and prints a job id, as --parsable does.
STUB_SBATCH = """#!/bin/sh
echo "$*" >> "$STUB_DIR/args"
id=$((100 + $(wc -l < "$STUB_DIR/args")))
last=
while [ $# -gt 0 ]; do
    case "$1" in
        --array=0-*) last=${1#--array=0-} ;;
        --*) ;;
        *) break ;;
    esac
    shift
done
if [ -n "$last" ]; then
    i=0
    while [ "$i" -le "$last" ]; do
        SLURM_ARRAY_JOB_ID=$id SLURM_ARRAY_TASK_ID=$i sh "$@" >> "$STUB_DIR/jobs.log" 2>&1 || exit 1
        if grep -qx "${id}_$i" "$STUB_DIR/requeued" 2>/dev/null; then
            sed -i "/^${id}_$i\\$/d" "$STUB_DIR/requeued"
            continue
        fi
        i=$((i + 1))
    done
else
    SLURM_JOB_ID=$id sh "$@" >> "$STUB_DIR/jobs.log" 2>&1 || exit 1
fi
echo "$id"
"""


def workdir(path):
    """A folder to sweep in, with a teacher cache of random features (no download, no extraction)."""
    from aft.datasets import load_task
    task = load_task("digits")
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(len(task.train), 8, generator=gen), torch.randn(len(task.test), 8, generator=gen)
    write_features(str(path / "features" / "teacher_digits.pt"), train, test,
                   make_meta("teacher", "digits", train, test))
    return path


def sh(script, cwd, **env):
    return subprocess.run(["sh", script], cwd=cwd, env=dict(ENV, **env), capture_output=True, text=True,
                          timeout=900)


def results(path):
    """Each results file of the sweep in `path`: its name -> its final accuracy."""
    return {p.name: json.load(open(p))["final_acc"] for p in (path / OUT).glob("*.json")}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The sweep run one run after another (no GPUS): the files every other way must write."""
    path = workdir(tmp_path_factory.mktemp("sequential"))
    out = sh(SWEEP_BETA, path)
    assert out.returncode == 0, out.stdout + out.stderr
    files = results(path)
    assert len(files) == 4  # init x seeds 0, 1 x validation, test
    return path, files


def test_grid_lists_the_runs_of_each_phase(tmp_path):
    (tmp_path / "chosen.txt").write_text("init 0 0.0001\naft 10 0.0001\n")
    script = '. "$ROOT/examples/grid.sh"; sweep_settings; val_runs; echo --; test_runs'
    out = subprocess.run(["sh", "-c", script], env=dict(ENV, ROOT=ROOT, OUT=str(tmp_path), METHODS="init aft",
                                                        BETAS="1 10", SEEDS="0 1"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "init 0 0 True", "aft 1 0 True", "aft 10 0 True", "init 0 1 True", "aft 1 1 True", "aft 10 1 True", "--",
        "init 0 0 False", "init 0 1 False", "aft 10 0 False", "aft 10 1 False"]

    # A method without a chosen beta stops the listing with the reason.
    (tmp_path / "chosen.txt").write_text("init 0 0.0001\n")
    out = subprocess.run(["sh", "-c", script], env=dict(ENV, ROOT=ROOT, OUT=str(tmp_path), METHODS="init aft"),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"error: no validation result for aft in {tmp_path}; see the errors above"]


@pytest.mark.slow
def test_gpus_sweep_writes_the_files_of_the_sequential_sweep(sequential, tmp_path):
    _, files = sequential
    path = workdir(tmp_path)
    out = sh(SWEEP_BETA, path, GPUS="cpu cpu", EXTRA="--image_size=16")  # GPUS gives --device=cpu
    assert out.returncode == 0, out.stdout + out.stderr
    assert results(path) == files
    assert "| digits | resnet10t | - | init |" in out.stdout
    for name in files:
        assert json.load(open(path / OUT / name))["config"]["device"] == "cpu"


def test_gpus_sweep_with_a_failed_run_fails_after_its_phase(tmp_path):
    """GPUS="cpu 7": the runs dealt to device 7 fail (no such GPU is visible, here or on a one-GPU
    machine); the cpu queue's run still finishes, and the script stops before phase 2 with a status
    and a line that say so."""
    path = workdir(tmp_path)
    out = sh(SWEEP_BETA, path, GPUS="cpu 7")
    assert out.returncode != 0
    assert "error: --device=cuda but no CUDA device is visible; use --device=cpu or --device=auto" in out.stderr
    # (in the stream, not as a whole line: the other queue's progress bar may end without a newline)
    assert "error: failed: train init 0 1 True (on device 7)\n" in out.stderr
    assert out.stderr.splitlines()[-1] == ("error: the runs named above failed; fix the cause and start the script "
                                           "again (finished runs are skipped)")
    [done] = results(path)  # seed 0's validation run, on the cpu queue
    assert "_seed0_val_" in done
    assert "== 2." not in out.stdout and not (path / OUT / "chosen.txt").exists()


@pytest.mark.slow
def test_slurm_sweep_under_a_stand_in_sbatch(sequential, tmp_path):
    seq_path, files = sequential
    path = workdir(tmp_path)
    stub = tmp_path / "bin" / "sbatch"
    stub.parent.mkdir()
    stub.write_text(STUB_SBATCH)
    stub.chmod(0o755)
    env = dict(PATH=f"{stub.parent}{os.pathsep}{ENV['PATH']}", STUB_DIR=str(tmp_path))
    out = sh(SLURM_SWEEP, path, **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines() == ["submitted: validation runs 101 (2 tasks), test runs 102 (2 tasks), table 103"]
    args = (tmp_path / "args").read_text().splitlines()
    assert args == [
        f"--parsable --export=ALL --job-name=val_digits_resnet10t --array=0-1 --requeue --gres=gpu:1 {SLURM_SWEEP} val",
        f"--parsable --export=ALL --job-name=test_digits_resnet10t --array=0-1 --requeue --gres=gpu:1 "
        f"--dependency=afterok:101 {SLURM_SWEEP} test",
        f"--parsable --export=ALL --job-name=table_digits_resnet10t --dependency=afterok:102 {SLURM_SWEEP} table"]
    assert results(path) == files
    assert (path / OUT / "chosen.txt").read_text() == (seq_path / OUT / "chosen.txt").read_text()
    log = (tmp_path / "jobs.log").read_text()
    assert "| digits | resnet10t | - | init |" in log and (path / OUT / "beta.png").exists()
    assert os.listdir(path / "checkpoints" / "sweep_digits_resnet10t") == []

    # Submitted again with one more seed: the finished runs (same configuration) are skipped and left
    # as they were; only seed 2's runs are new.
    stamps = {name: os.stat(path / OUT / name).st_mtime_ns for name in files}
    (tmp_path / "jobs.log").unlink()
    out = sh(SLURM_SWEEP, path, SEEDS="0 1 2", **env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "(3 tasks)" in out.stdout
    log = (tmp_path / "jobs.log").read_text()
    assert log.count("done already:") == 4
    new = set(results(path)) - set(files)
    assert len(new) == 2 and all("seed2" in name for name in new)
    assert {name: os.stat(path / OUT / name).st_mtime_ns for name in files} == stamps

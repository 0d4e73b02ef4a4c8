"""The summariser on hand-made results JSONs (numbers checked against ones computed here), its
command line and plot, and examples/sweep_beta.sh end to end on a tiny sweep."""
import json
import os
import statistics
import subprocess
import sys
import time

import pytest

from aft.record import RunRecord
from aft.results import headline, load_results, markdown, summarise
from tests.conftest import PYTHON, ROOT
from tests.test_cli import result_file


def write_result(folder, dataset, method, prec, seed, acc, use_val=False, model="resnet10t", lr=1e-3,
                 pretrained="vit_g", **cfg):
    """A results record as aft.experiment.run writes it (the summariser reads its config and accuracy)."""
    config = dict(seed=seed, model_class=model, init_model="", dataset=dataset, pretrained_models=pretrained,
                  train_frac=1.0, use_val=use_val, method=method, prec=prec, learn_scales=True, prior_lr=1e-2,
                  steps=100, eval_steps=50, optimizer="adam", batch_size=32, lr=lr, wd=0.0, no_augment=True,
                  use_wandb=False, run_name="", ckpt_dir="", out_dir=str(folder), device="auto") | cfg
    name = f"{dataset}_{model}_{method}_prec{prec:g}_lr{lr:g}_seed{seed}" + ("_val" if use_val else "") + \
        "".join(f"_{k}{v}" for k, v in cfg.items())
    RunRecord(run_name=name, config=config, eval_split="val" if use_val else "test", steps=100, n_train=90,
              n_eval=10, evals=[dict(step=50, loss=1.0, ce=1.0, reg=0.0, acc=acc / 2),
                                dict(step=100, loss=0.5, ce=0.5, reg=0.0, acc=acc)],
              final_acc=acc, device="cpu", precision="fp32", world_size=1, decoded_size=0,
              seconds=1.0).write(os.path.join(folder, f"{name}.json"))


# accuracies by (dataset, method, beta, split) over seeds 0, 1, 2
SWEEP = {
    ("A", "init", 0, "val"): [0.70, 0.72, 0.71],
    ("A", "init", 0, "test"): [0.60, 0.62, 0.64],
    ("A", "aft", 1, "val"): [0.74, 0.75, 0.73],
    ("A", "aft", 10, "val"): [0.80, 0.79, 0.81],   # the best on validation
    ("A", "aft", 10, "test"): [0.70, 0.74, 0.72],
    ("A", "aft", 1, "test"): [0.90, 0.90, 0.90],   # better on test, but not chosen: validation decides
    ("A", "kd", 1, "test"): [0.65, 0.66, 0.67],    # no validation runs: the best on test, marked
    ("A", "kd", 3, "test"): [0.61, 0.63, 0.62],
    ("B", "init", 0, "test"): [0.50, 0.54],
    ("B", "aft", 3, "test"): [0.80, 0.78],
    ("B", "kd", 3, "test"): [0.55, 0.57],
}


@pytest.fixture
def sweep_dir(tmp_path):
    for (dataset, method, prec, split), accs in SWEEP.items():
        for seed, acc in enumerate(accs):
            write_result(tmp_path, dataset, method, prec, seed, acc, use_val=split == "val")
    return tmp_path


def test_summary_numbers(sweep_dir):
    rows = summarise(load_results([str(sweep_dir)]))
    by = {(r["dataset"], r["method"]): r for r in rows}
    assert [(r["dataset"], r["method"]) for r in rows] == [("A", "init"), ("A", "aft"), ("A", "kd"),
                                                            ("B", "init"), ("B", "aft"), ("B", "kd")]

    def check(row, accs, prec, chosen_on):
        assert row["mean"] == pytest.approx(statistics.fmean(accs))
        assert row["std"] == pytest.approx(statistics.stdev(accs))
        assert row["n"] == len(accs) and row["prec"] == prec and row["chosen_on"] == chosen_on

    check(by["A", "init"], SWEEP["A", "init", 0, "test"], 0, "only")
    check(by["A", "aft"], SWEEP["A", "aft", 10, "test"], 10, "val")
    assert by["A", "aft"]["val_mean"] == pytest.approx(statistics.fmean(SWEEP["A", "aft", 10, "val"]))
    check(by["A", "kd"], SWEEP["A", "kd", 1, "test"], 1, "test")
    check(by["B", "aft"], SWEEP["B", "aft", 3, "test"], 3, "only")
    assert by["A", "init"]["teachers"] == "" and by["A", "aft"]["teachers"] == "vit_g"

    def err(dataset, method, prec):
        return 1 - statistics.fmean(SWEEP[dataset, method, prec, "test"])

    expected = {("A", "aft"): err("A", "aft", 10) / err("A", "init", 0),
                ("A", "kd"): err("A", "kd", 1) / err("A", "init", 0),
                ("B", "aft"): err("B", "aft", 3) / err("B", "init", 0),
                ("B", "kd"): err("B", "kd", 3) / err("B", "init", 0)}
    for key, value in expected.items():
        assert by[key]["norm_err"] == pytest.approx(value)
    assert by["A", "init"]["norm_err"] == 1
    summary = {m: (e, k) for m, e, k in headline(rows)}
    assert summary["aft"] == (pytest.approx((expected["A", "aft"] + expected["B", "aft"]) / 2), 2)
    assert summary["kd"] == (pytest.approx((expected["A", "kd"] + expected["B", "kd"]) / 2), 2)
    assert summary["init"] == (1, 2)

    table = markdown(rows)
    a_aft = [line for line in table.splitlines() if line.startswith("| A | resnet10t | vit_g | aft |")]
    assert a_aft == [f"| A | resnet10t | vit_g | aft | 10 | val | 80.00 | 72.00 ± 2.00 | 3 | "
                     f"{expected['A', 'aft']:.3f} |"]
    assert "| A | resnet10t | vit_g | kd | 1 | test (optimistic) |" in table
    assert "| A | resnet10t | - | init | - | - | 71.00 | 62.00 ± 2.00 | 3 | 1.000 |" in table
    assert f"| aft | {summary['aft'][0]:.3f} | 2 |" in table


def test_reruns_settings_and_strays(tmp_path):
    """A rerun of a seed counts once (the newest file); runs of another setting are never averaged in;
    JSONs that are not results are skipped."""
    write_result(tmp_path, "A", "aft", 1, 0, 0.5)
    time.sleep(0.05)
    write_result(tmp_path / "again", "A", "aft", 1, 0, 0.7)  # the same run, later, in a sub-folder
    write_result(tmp_path, "A", "aft", 1, 1, 0.9)
    write_result(tmp_path, "A", "aft", 1, 0, 0.2, steps=5)  # another setting: its own row
    (tmp_path / "wandb.json").write_text('{"not": "a result"}')
    (tmp_path / "broken.json").write_text("{")
    rows = summarise(load_results([str(tmp_path)]))
    assert len(rows) == 2
    main = next(r for r in rows if dict(r["setting"])["steps"] == 100)
    assert main["n"] == 2 and main["mean"] == pytest.approx(0.8)
    table = markdown(rows)
    assert "| setting |" in table and "steps=5" in table and "steps=100" in table


@pytest.mark.slow
def test_command_line_and_plot(sweep_dir, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    png = tmp_path / "plots" / "beta.png"
    out = subprocess.run([PYTHON, "-m", "aft.results", str(sweep_dir), "--plot", str(png)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("| dataset | model |") and f"plot: {png}" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    out = subprocess.run([PYTHON, "-m", "aft.results", str(sweep_dir), "--chosen"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.stdout.split("\n") == ["init 0 0.001", "aft 10 0.001", "kd 1 0.001", "init 0 0.001",
                                      "aft 3 0.001", "kd 3 0.001", ""]

    out = subprocess.run([PYTHON, "-m", "aft.results", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path / 'nowhere'} is not a folder; give the "
                                               "--out_dir of run.py (default ./results)"]


@pytest.mark.slow
def test_sweep_beta_script_end_to_end(tmp_path):
    """examples/sweep_beta.sh on a tiny sweep (digits, ResNet-10t at 16 px from scratch, EfficientNet-
    Lite2 features, AFT, 2 seeds x 2 betas, 4 steps): validation runs, test runs at the chosen beta,
    table and plot; started again, it redoes nothing. (init is left out to keep it short: 6 runs.)"""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", DATASET="digits", MODEL="resnet10t",
               INIT_MODEL="", PRETRAINED="efficientnet_lite2", METHODS="aft", BETAS="1 10", SEEDS="0 1",
               STEPS="4", EVAL_STEPS="2", BATCH_SIZE="32", LR="1e-3",
               EXTRA="--image_size=16 --teacher_image_size=16")  # a small teacher extraction: a short test
    script = os.path.join(ROOT, "examples", "sweep_beta.sh")
    out = subprocess.run(["sh", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    folder = tmp_path / "results" / "sweep_digits_resnet10t"
    names = sorted(p.name for p in folder.glob("*.json"))
    chosen = (folder / "chosen.txt").read_text().split()
    beta = chosen[chosen.index("aft") + 1]
    assert beta in ("1", "10")
    assert names == sorted(result_file(folder, name).name for name in
                           [f"digits_resnet10t_aft_prec{b}_lr0.001_seed{s}_val" for b in (1, 10) for s in (0, 1)] +
                           [f"digits_resnet10t_aft_prec{beta}_lr0.001_seed{s}" for s in (0, 1)])
    [row] = summarise(load_results([str(folder)]))
    assert row["method"] == "aft" and row["chosen_on"] == "val" and row["n"] == 2 and row["val_n"] == 2
    assert f"| digits | resnet10t | efficientnet_lite2 | aft | {beta} | val |" in out.stdout
    assert (folder / "beta.png").read_bytes()[:4] == b"\x89PNG"
    assert os.listdir(tmp_path / "checkpoints" / "sweep_digits_resnet10t") == []  # finished runs drop their checkpoint
    for name in names:
        res = json.load(open(folder / name))
        assert res["config"]["wandb_group"] == "sweep_digits_resnet10t"

    again = subprocess.run(["sh", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and again.stdout.count("done already:") == 6


@pytest.mark.slow
def test_quickstart_script_runs_each_method_at_its_beta(tmp_path):
    """examples/quickstart.sh with METHODS on a tiny stand-in for the demo (digits, ResNet-10t at 16 px,
    EfficientNet-Lite2 features, 2 steps): one run per method at its beta, then the table; a method
    without a beta stops the script before any run."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
               HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", METHODS="init aft_dense linear_probe",
               AFT_DENSE_PREC="3", LINEAR_PROBE_LR="0.05", SEEDS="0", OUT="res",
               EXTRA="--dataset=digits --model_class=resnet10t --image_size=16 "
                     "--pretrained_models=efficientnet_lite2 --teacher_image_size=16 --steps=2 --eval_steps=2 "
                     "--batch_size=32")
    script = os.path.join(ROOT, "examples", "quickstart.sh")
    out = subprocess.run(["sh", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(os.listdir(tmp_path / "res")) == sorted(
        result_file(tmp_path / "res", name).name for name in ["digits_resnet10t_aft_dense_prec3_lr0.001_seed0",
                                                              "digits_resnet10t_init_lr0.001_seed0",
                                                              "digits_resnet10t_linear_probe_lr0.05_seed0"])
    assert "| digits | resnet10t | efficientnet_lite2 | aft_dense | 3 |" in out.stdout
    env["METHODS"] = "init nope"
    out = subprocess.run(["sh", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "no beta for method nope: set NOPE_PREC" in out.stderr
    assert len(os.listdir(tmp_path / "res")) == 3  # nothing ran

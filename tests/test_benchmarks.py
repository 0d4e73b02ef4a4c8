"""The benchmarks keep working: each runs with --tiny on the CPU and prints JSON lines with the
expected keys. Nothing here asserts on time."""
import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, needs_cpp_compiler


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATE_KEYS = {"bench", "pipeline", "model", "device", "precision", "batch_size", "image_size", "seconds",
             "images_per_s", "tflops"}


def run_bench(script, *flags, env=True):
    """The benchmark's JSON lines (with env=True, the first must describe the machine)."""
    environ = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    # the timeout is a safety net against a hang on a busy machine, not a speed check
    out = subprocess.run([PYTHON, os.path.join(ROOT, "benchmarks", script), "--tiny", "--device=cpu", *flags],
                         cwd=ROOT, env=environ, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]  # every line is JSON
    assert lines and (not env or lines[0]["pipeline"] == "env")
    return lines


def load_benchmark_module(name):
    """benchmarks/<name>.py as a module: the folder is no package (a script there imports its
    neighbours from its own folder, which Python puts first on the path)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_rates(record):
    assert RATE_KEYS <= set(record), RATE_KEYS - set(record)
    assert record["images_per_s"] > 0 and record["seconds"] > 0 and record["tflops"] > 0


@pytest.mark.slow
def test_train_step_tiny():
    lines = run_bench("train_step.py")
    models = {r["model"] for r in lines[1:]}
    assert models == {"test_vit", "test_resnet"}
    for model in models:
        rows = {(r["pipeline"], r.get("method")): r for r in lines if r.get("model") == model}
        assert set(rows) == {("upstream", "aft"), ("project", "aft"), ("project", "init"), ("summary", None)}
        for key in (("upstream", "aft"), ("project", "aft"), ("project", "init")):
            check_rates(rows[key])
            assert {"ms_per_step", "gflops_per_step", "loss_finite"} <= set(rows[key])
            assert rows[key]["loss_finite"] and rows[key]["gflops_per_step"] > 0
        assert rows[("upstream", "aft")]["precision"] == "fp32"
        assert rows[("project", "aft")]["teacher_dim"] == 64 and rows[("project", "init")]["teacher_dim"] == 0
        # the summary's figures are the ratios of the rows it sums up (the targets are the README's)
        summary, up, aft, init = rows[("summary", None)], rows[("upstream", "aft")], rows[("project", "aft")], \
            rows[("project", "init")]
        assert summary["speedup_vs_upstream"] == pytest.approx(aft["images_per_s"] / up["images_per_s"], rel=0.01, abs=0.006)
        assert summary["aft_over_init"] == pytest.approx(aft["ms_per_step"] / init["ms_per_step"], rel=0.01, abs=6e-4)
        assert set(summary["targets"]) == {"speedup_vs_upstream", "aft_over_init"}


@pytest.mark.slow
@needs_cpp_compiler
def test_train_step_compiled_tiny():
    """The path gpu_check.sh times last: the project's step under torch.compile."""
    lines = run_bench("train_step.py", "--compile", "--no_upstream", "--models=test_vit", "--methods=aft")
    (row,) = [r for r in lines if r["pipeline"] == "project"]
    check_rates(row)
    assert row["compile"] and row["loss_finite"] and row["method"] == "aft" and row["gflops_per_step"] > 0


def test_host_syncs_counts_the_warnings_of_cuda_sync_debug_mode(monkeypatch):
    """host_syncs' CUDA branch without a GPU: the debug mode is switched on around the call only,
    and each 'synchronizing' warning the call raises is one wait."""
    import warnings
    import torch
    common = load_benchmark_module("common")
    modes = []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: modes.append("synchronize"))

    def step(n):
        for _ in range(n):
            warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("an unrelated warning")

    assert common.host_syncs(torch.device("cuda"), step, 2) == 2
    assert modes == ["warn", "default", "synchronize"]
    assert common.host_syncs(torch.device("cuda"), step, 0) == 0
    assert common.host_syncs(torch.device("cpu"), step, 3) is None


def test_extract_tiny():
    lines = run_bench("extract.py")
    models = {r["model"] for r in lines[1:]}
    assert models == {"test_vit", "test_vit3"}
    for model in models:
        rows = {r["pipeline"]: r for r in lines if r.get("model") == model}
        assert set(rows) == {"upstream", "project", "summary"}
        for pipeline in ("upstream", "project"):
            check_rates(rows[pipeline])
            assert rows[pipeline]["features_finite"] and rows[pipeline]["gflops_per_image"] > 0
        assert {"decode_s", "images_per_s_compute", "tflops_compute"} <= set(rows["project"])
        assert rows["project"]["images"] == 24 and rows["upstream"]["images"] == 8
        assert rows["project"]["dim"] == rows["upstream"]["dim"]
        assert rows["summary"]["speedup_vs_upstream"] > 0


@pytest.mark.slow
def test_distributed_tiny():
    """Data-parallel steps, the gather of phi and sharded extraction, over 2 CPU processes (torchrun)."""
    lines = run_bench("distributed.py")
    rows = {(r["pipeline"], r.get("method")): r for r in lines[1:]}
    assert set(rows) == {("train", "aft"), ("train", "init"), ("gather", None), ("extract", None)}
    assert lines[0]["processes"] == 2 and all(r["processes"] == 2 for r in rows.values())
    for method in ("aft", "init"):
        train = rows[("train", method)]
        assert train["batch_per_process"] == 4 and train["ms_per_step"] > 0
        assert train["images_per_s"] == pytest.approx(2 * train["images_per_s_per_process"], rel=0.01)
    gather = rows[("gather", None)]
    assert gather["rows_per_process"] == 4 and gather["ms_per_step"] > 0 and 0 < gather["share_of_aft_step"]
    extract = rows[("extract", None)]
    assert extract["images"] == 64 and len(extract["images_per_s_per_process"]) == 2 and extract["features_finite"]


@pytest.mark.slow
def test_demo_precision_tiny(tmp_path, demo_features):
    """bf16 against fp32 on the demo's path, seed by seed; each run's JSON records its precision."""
    lines = run_bench("demo_precision.py", f"--features_dir={demo_features}",
                      f"--out_dir={tmp_path / 'results'}", env=False)
    runs, (summary,) = lines[:-1], lines[-1:]
    assert [(r["seed"], r["precision"]) for r in runs] == [(0, "bf16"), (0, "fp32"), (1, "bf16"), (1, "fp32")]
    for r in runs:
        saved = json.load(open(tmp_path / "results" / f"demo_{r['precision']}_seed{r['seed']}.json"))
        assert saved["precision"] == r["precision"] and saved["steps"] == 4 and saved["final_acc"] == r["final_acc"]
    assert summary["pipeline"] == "summary" and summary["seeds"] == 2
    assert summary["bf16_minus_fp32"] == [round(runs[i]["final_acc"] - runs[i + 1]["final_acc"], 4) for i in (0, 2)]

    (skipped,) = run_bench("demo_precision.py", f"--features_dir={tmp_path / 'none'}", env=False)
    assert "no cached features" in skipped["skipped"] and "save_features.py" in skipped["skipped"]


def test_gpu_check_script_parses():
    sh = "bash" if subprocess.run(["which", "bash"], capture_output=True).returncode == 0 else "sh"
    out = subprocess.run([sh, "-n", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_own_data_tiny():
    """A picture folder through save_features.py and run.py, the run once reading its pictures from disk
    a batch at a time and once holding them in memory; each line has its rate and peak memory."""
    lines = run_bench("own_data.py")
    folder, saved, *runs, summary = lines[1:]
    assert folder["pictures"] == 200 and saved["images"] == 200 and saved["peak_rss_gib"] > 0
    assert [(r["store"], r["streamed"], r["n_train"]) for r in runs] == [("disk", True, 160), ("memory", False, 160)]
    assert all(r["images_per_s"] > 0 for r in runs)
    assert summary["disk_over_memory"] == pytest.approx(runs[0]["images_per_s"] / runs[1]["images_per_s"], rel=0.05)

"""What the benchmarks share: the JSON lines they print, device synchronisation, FLOP counting, the
bf16 peak of the device, memory figures, and the --tiny argument handling.

A benchmark run as `python benchmarks/x.py` imports this as `common` (Python puts the script's
folder first on its path). Run by a Python without the project's packages (no environment
activated), it runs itself again with the one setup.sh made (.venv), or says in one line how to get
it. Import this before `aft`: it keeps the Hugging Face hub offline.
"""
import contextlib
import gc
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    import absl  # noqa: F401
except ImportError:
    VENV = os.path.join(ROOT, ".venv", "bin", "python")
    if os.path.exists(VENV) and os.path.realpath(sys.prefix) != os.path.realpath(os.path.join(ROOT, ".venv")):
        os.execv(VENV, [VENV, *sys.argv])
    sys.exit(f"error: this Python ({sys.executable}) lacks the project's packages: run sh {ROOT}/setup.sh first (it "
             f"makes {ROOT}/.venv, which the benchmarks then use), or activate your environment")
sys.path.insert(1, ROOT)  # `aft` of this checkout, without an install

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers or timm read it

from aft.config import Config  # noqa: E402
from aft.distributed import SINGLE  # noqa: E402
from aft.methods import get_method  # noqa: E402
from aft.models import resolve_model  # noqa: E402
from aft.plan import RunPlan, method_settings  # noqa: E402
from aft.runtime import resolve_device, resolve_precision  # noqa: E402
from aft.teachers import TeacherFeatures  # noqa: E402
from aft.train import Trainer  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) by device name, for the fraction-of-peak figures.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def emit(record):
    print(json.dumps(record), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device, override=0.0):
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def env_record(bench, device, precision, args):
    import timm
    rec = dict(bench=bench, pipeline="env", torch=torch.__version__, timm=timm.__version__,
               device=device.type, device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"cpu ({torch.get_num_threads()} threads)", precision=precision,
               peak_bf16_tflops=peak_tflops(device, args.peak_tflops), args=vars(args))
    return rec


def upstream_flags():
    """PyTorch's defaults, which the paper's code runs under: no TF32 matmuls, no cuDNN autotuning."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def count_flops():
    """FlopCounterMode with attention through the math kernel (its matmuls are then counted on every
    device; the fused kernels' FLOPs are not registered on CPU). Yields a callable: total FLOPs."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with sdpa_kernel([SDPBackend.MATH]), counter:
        yield counter.get_total_flops


def host_syncs(device, fn, *args):
    """How many times one call of fn makes the host wait for the device (CUDA's sync debug mode
    warns at each); None off CUDA. A step that never waits lets the host run ahead of the GPU."""
    if device.type != "cuda":
        return None
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)  # outside the debug mode: this wait is the benchmark's, not the step's
    return sum("synchroniz" in str(w.message) for w in caught)


def rates(record, seconds, items, flops_per_item, peak):
    record.update(seconds=round(seconds, 4), images_per_s=round(items / seconds, 2),
                  tflops=round(flops_per_item * items / seconds / 1e12, 4))
    if peak:
        record["frac_of_bf16_peak"] = round(record["tflops"] / peak, 4)
    return record


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def max_mem_gb(device):
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def parse_with_tiny(parser, argv, tiny):
    """Parse; with --tiny, the `tiny` values replace the defaults (a flag given explicitly still wins)."""
    args = parser.parse_args(argv)
    if args.tiny:
        defaults = parser.parse_args([])
        for key, value in tiny.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    return args


def start(bench, args):
    """Device, precision and bf16 peak of this run; the first JSON line describes the machine."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    emit(env_record(bench, device, precision, args))
    return device, precision, peak_tflops(device, args.peak_tflops)


def project_trainer(name, method, task, psi, steps, batch_size, image_size, device, precision, world=SINGLE,
                    compile=False):
    """run.py's Trainer of downstream model `name` and `method` (beta 1, Adam at 1e-4) on an in-memory
    `task`, with the random teacher features `psi` of its train rows: what a run builds, minus the
    data loading and the cache files."""
    cfg = Config(model_class=name, dataset=task.name, pretrained_models="random", method=method, prec=1.0,
                 steps=steps, eval_steps=steps, batch_size=batch_size, lr=1e-4, optimizer="adam", compile=compile,
                 image_size=image_size, device=str(device), precision=precision)
    method_cls = get_method(method)
    plan = RunPlan(cfg, method_cls, method_settings(cfg, method_cls), dataset=None, student=resolve_model(name),
                   teachers=(), decode_size=0, device=device, precision=precision, run_name="benchmark", identity={},
                   world=world)
    rows = torch.arange(len(task.train))
    teachers = TeacherFeatures(["random"], [dict(train=psi)], rows, task.name, cfg.features_dir, 1.0, False) \
        if method_cls.uses_teacher else None
    return Trainer(plan, task, rows, task.test, teachers)

"""Where and how numbers are computed: the device, the precision, the seed. Decided in one place."""
import contextlib
import hashlib
import random
import re

import numpy as np
import torch

from aft.errors import UserError
from aft.registry import did_you_mean


DEVICES = "auto, cpu, cuda, cuda:N"


def resolve_device(name="auto"):
    """The torch.device of --device: auto (CUDA when there is one, else the CPU), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"--device={name} is no device here{did_you_mean(name, ['auto', 'cpu', 'cuda'])}; valid: "
                        f"{DEVICES}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={name} but no CUDA device is visible; use --device=cpu or --device=auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device={name} but the visible CUDA devices are cuda:0 to "
                        f"cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def free_memory(device):
    """Bytes this process can still fill on `device`: the GPU's free memory; on the host the kernel's
    MemAvailable, and what the process's own limits (RLIMIT_DATA, RLIMIT_AS) leave it, where set."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = [kib * 1024 for kib in proc_fields("/proc/meminfo", "MemAvailable")]
    try:
        import resource
        used = dict(zip(("VmData", "VmSize"), (kib * 1024 for kib in proc_fields("/proc/self/status", "VmData",
                                                                                    "VmSize"))))
        for limit, field in ((resource.RLIMIT_DATA, "VmData"), (resource.RLIMIT_AS, "VmSize")):
            soft = resource.getrlimit(limit)[0]
            if soft != resource.RLIM_INFINITY:
                free.append(max(0, soft - used.get(field, 0)))
    except ImportError:  # no resource module (Windows)
        pass
    return min(free) if free else 1 << 62


def proc_fields(path, *names):
    """The kB values of lines `NAME: value kB` of a /proc file, in the order of `names` (none where the
    file or a line is missing)."""
    try:
        with open(path) as f:
            found = {line.split(":")[0]: int(line.split()[1]) for line in f if line.split(":")[0] in names}
        return [found[name] for name in names if name in found]
    except (OSError, ValueError, IndexError):
        return []


def resolve_precision(name, device):
    """auto: bf16 autocast on CUDA, fp32 on a CPU. A CPU with native bf16 (AVX512-BF16, AMX) runs
    --precision=bf16 about twice as fast, but one without emulates it slowly, and a default that
    changed the numbers with the machine would make the same command give different results."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("bf16", "fp32"):
        raise UserError(f"--precision={name}; valid: auto, bf16, fp32")
    return name


def autocast(device, precision):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed, rank):
    """The seed of process `rank` of a torchrun run once its model is built (alike on every process):
    each draws its own dropout and augmentation from then on. Hashed, so that it is no other stream's
    seed (an epoch's shuffle is seeded seed * 1_000_003 + epoch); 32 bits, numpy's limit."""
    return int.from_bytes(hashlib.sha256(f"rank {seed} {rank}".encode()).digest()[:4], "little")


def speed_settings(device, precision):
    """Fast kernels on CUDA. TF32 matmuls only with bf16: --precision=fp32 keeps PyTorch's defaults
    (full fp32 matmuls, TF32 convolutions), the arithmetic the paper's code ran with."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "bf16"
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def library_versions():
    """The versions of the libraries whose numbers a result or a feature cache depends on."""
    import numpy
    import timm
    import transformers
    return dict(torch=str(torch.__version__), timm=timm.__version__, transformers=transformers.__version__,
                numpy=numpy.__version__)

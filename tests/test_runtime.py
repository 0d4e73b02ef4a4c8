"""Where and how numbers are computed: --precision=fp32 is the paper's arithmetic on CUDA too."""
import pytest
import torch

from aft.runtime import speed_settings


@pytest.fixture
def restore_backend_flags():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_fp32_on_cuda_keeps_full_precision_matmuls(restore_backend_flags):
    """The flags are process settings, so they can be checked without a GPU: bf16 runs may use TF32
    matmuls; fp32 runs must not (PyTorch's default, what the paper's code ran with), even after a bf16
    run in the same process."""
    cuda = torch.device("cuda")
    speed_settings(cuda, "bf16")
    assert torch.backends.cuda.matmul.allow_tf32
    speed_settings(cuda, "fp32")
    assert not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32  # PyTorch's default for convolutions, as the paper had


def flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cpu_settings_are_left_alone(restore_backend_flags, precision):
    """Each flag starts at the value opposite to what a CUDA run of this precision sets, so any flag a CPU
    run touched would show: a CPU run does not use them, and they stay as the user had them."""
    cuda_sets = (precision == "bf16", True, True)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = \
        [not v for v in cuda_sets]
    speed_settings(torch.device("cpu"), precision)
    assert flags() == tuple(not v for v in cuda_sets)
    speed_settings(torch.device("cuda"), precision)  # and the same call on CUDA does set them: the test can fail
    assert flags() == cuda_sets

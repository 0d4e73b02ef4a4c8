"""Time save_features.py's real path (aft.extract) against an upstream-style fp32 extraction, both
from image files on disk; print one JSON line per measurement.

    python benchmarks/extract.py                 # DINOv2 ViT-G/14 at 518 and CLIP ViT-G/14 at 224 (a GPU)
    python benchmarks/extract.py --tiny          # tiny models on CPU in seconds (CI)

Both pipelines read the same random CIFAR-shaped images (32x32 PNG files written to a temporary
folder first) through a model with random weights (no download).

`project`: what save_features.py does for a dataset of image files: decode every file once into a
uint8 tensor as the project's loaders do (aft.datasets.decode.square_uint8: shorter side to the side
the model's eval transform resizes to, bicubic, central square; PIL in threads), then aft.extract's own steps: `prepare_body` (device, eval, bf16,
channels-last), the model's `make_inputs(...).to(device)` (uint8 on the device, resized and normalised per batch there)
and `compute_features` (inference mode, bf16 autocast, asynchronous copies back). Timed from the
first file read to the features on the host, after one untimed warm-up batch.
`upstream`: the paper-style loop: fp32 model, a torch DataLoader (num_workers=0) whose dataset
opens each file with PIL and applies timm's eval transform (Resize, CenterCrop, ToTensor,
Normalize), features copied to the host after every batch.

FLOPs are counted with torch.utils.flop_counter on a forward of two images (attention through the
math kernel). Nothing here asserts on time.
"""
import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

# first: it finds the project's Python (no environment need be active) and keeps the hub offline
from common import count_flops, emit, free, max_mem_gb, parse_with_tiny, rates, start, sync, upstream_flags

import numpy as np
import torch

from aft.datasets import Split, Task
from aft.datasets.decode import square_uint8
from aft.extract import compute_features, prepare_body
from aft.models import resolve_model
from aft.runtime import speed_settings

TINY_MODELS = "test_vit,test_vit3"


def write_images(folder, n, size, fmt, seed=0):
    from PIL import Image
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i:06d}.{'jpg' if fmt == 'jpeg' else 'png'}")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def decode_files(paths, workers, size):
    """Image files to one uint8 (N, 3, size, size) tensor, decoded once in threads, as the project's
    loaders do for datasets of image files."""
    from PIL import Image
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)

    def one(i):
        with Image.open(paths[i]) as im:
            images[i] = square_uint8(im, size)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(one, range(len(paths))))
    return images


class FileImages(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


def build_body(spec, device):
    """The model body with random weights, initialised on the device when it can be (a 1B-parameter
    model initialises in seconds there, minutes on the host)."""
    if device.type == "cuda":
        try:
            with torch.device(device):
                return spec.build(pretrained=False)
        except Exception:  # some initialisers only run on the host
            pass
    return spec.build(pretrained=False)


def upstream_transform(body, image_size):
    import timm
    model = getattr(body, "model", body)
    config = timm.data.resolve_data_config({"input_size": (3, image_size, image_size)} if image_size else {},
                                           model=model)
    return timm.data.create_transform(**config), config["input_size"][-1]


def flops_per_image(body, x):
    with torch.inference_mode(), count_flops() as flops:
        body(x)
    return flops() / len(x)


def bench_upstream(args, name, body, paths, device, peak):
    free(device)
    upstream_flags()
    body = body.to(device).float().eval()
    transform, size = upstream_transform(body, args.image_size)
    paths = paths[:args.baseline_images]
    loader = torch.utils.data.DataLoader(FileImages(paths, transform), batch_size=args.baseline_batch_size,
                                         num_workers=0)
    x = torch.stack([FileImages(paths[:2], transform)[i] for i in range(2)]).to(device)
    per_image = flops_per_image(body, x)
    with torch.no_grad():
        body(torch.stack([FileImages(paths, transform)[i % len(paths)]
                          for i in range(args.baseline_batch_size)]).to(device)).cpu()  # warm-up
        sync(device)
        t0 = time.perf_counter()
        feats = [body(x.to(device)).cpu() for x in loader]
        seconds = time.perf_counter() - t0
    feats = torch.cat(feats)
    record = dict(bench="extract", pipeline="upstream", model=name, device=device.type, precision="fp32",
                  images=len(paths), batch_size=args.baseline_batch_size, image_size=size, dim=feats.shape[1],
                  gflops_per_image=round(per_image / 1e9, 3), features_finite=bool(torch.isfinite(feats).all()),
                  max_mem_gb=max_mem_gb(device))
    return rates(record, seconds, len(paths), per_image, peak)


def bench_project(args, name, spec, body, paths, device, precision, peak):
    free(device)
    speed_settings(device, precision)
    body = prepare_body(body, device, precision, spec.modality)
    task = Task("bench_files", "image", 10, Split(None, torch.zeros(0)), Split(None, torch.zeros(0)))

    size = args.decode_size or spec.pixels(args.image_size or None)
    warm = spec.make_inputs(decode_files(paths[:args.batch_size], args.workers, size), task,
                            args.image_size or None).to(device)
    x = warm.batch(torch.arange(2, device=device))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        per_image = flops_per_image(body, x)
    compute_features(body, warm, args.batch_size, device, precision)  # warm-up: cuDNN, allocator
    sync(device)

    t0 = time.perf_counter()
    images = decode_files(paths, args.workers, size)
    inputs = spec.make_inputs(images, task, args.image_size or None).to(device)
    t1 = time.perf_counter()
    feats = compute_features(body, inputs, args.batch_size, device, precision)  # ends on the host
    seconds = time.perf_counter() - t0
    compute_s = time.perf_counter() - t1
    record = dict(bench="extract", pipeline="project", model=name, device=device.type, precision=precision,
                  images=len(paths), batch_size=args.batch_size, image_size=inputs.size, dim=feats.shape[1],
                  gflops_per_image=round(per_image / 1e9, 3), decoded_size=size, decode_s=round(t1 - t0, 4),
                  images_per_s_compute=round(len(paths) / compute_s, 2),
                  tflops_compute=round(per_image * len(paths) / compute_s / 1e12, 4),
                  features_finite=bool(torch.isfinite(feats).all()), max_mem_gb=max_mem_gb(device))
    return rates(record, seconds, len(paths), per_image, peak)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_giant_patch14_dinov2,vit_giant_patch14_clip_224",
                   help="comma-separated timm names (built with random weights)")
    p.add_argument("--n_images", type=int, default=768, help="image files read by the project's path")
    p.add_argument("--baseline_images", type=int, default=64, help="of those, read by the upstream loop")
    p.add_argument("--batch_size", type=int, default=256, help="the project's batch (save_features.py's default)")
    p.add_argument("--baseline_batch_size", type=int, default=32)
    p.add_argument("--image_size", type=int, default=0, help="0: each model's own input size")
    p.add_argument("--disk_size", type=int, default=32, help="side of the image files (CIFAR: 32)")
    p.add_argument("--format", choices=("png", "jpeg"), default="png")
    p.add_argument("--decode_size", type=int, default=0,
                   help="side of the decoded squares (0: the project's, the side the model resizes to)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding threads")
    p.add_argument("--no_upstream", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="bf16 peak for frac_of_bf16_peak (0: by name)")
    p.add_argument("--tiny", action="store_true", help=f"{TINY_MODELS}, 24 images, batch 8: CPU in seconds")
    args = parse_with_tiny(p, argv, dict(models=TINY_MODELS, n_images=24, baseline_images=8, batch_size=8,
                                         baseline_batch_size=4, workers=2))
    args.baseline_images = min(args.baseline_images, args.n_images)
    return args


def main(argv=None):
    args = parse_args(argv)
    device, precision, peak = start("extract", args)
    with tempfile.TemporaryDirectory(prefix="aft-bench-images-") as folder:
        paths = write_images(folder, args.n_images, args.disk_size, args.format)
        for name in [m for m in args.models.split(",") if m]:
            spec = resolve_model(name)
            body, _ = build_body(spec, device)
            body.requires_grad_(False)  # inference only; also keeps FlopCounterMode's module hooks off
            results = {}
            if not args.no_upstream:
                results["upstream"] = bench_upstream(args, name, body, paths, device, peak)
                emit(results["upstream"])
            results["project"] = bench_project(args, name, spec, body, paths, device, precision, peak)
            emit(results["project"])
            summary = dict(bench="extract", pipeline="summary", model=name, device=device.type,
                           targets=dict(speedup_vs_upstream=8.0, frac_of_bf16_peak=0.45))
            if "upstream" in results:
                summary["speedup_vs_upstream"] = round(
                    results["project"]["images_per_s"] / results["upstream"]["images_per_s"], 2)
            if peak:
                summary["frac_of_bf16_peak"] = round(results["project"]["tflops_compute"] / peak, 4)
            emit(summary)
            del body, results
            free(device)


if __name__ == "__main__":
    main()

"""Time the real training step (aft.train.Trainer.step, what run.py runs) against an upstream-style
loop on the same data and model; print one JSON line per measurement.

    python benchmarks/train_step.py                      # ViT-S/16 and ResNet-50 at 224, batch 128 (a GPU)
    python benchmarks/train_step.py --compile --models vit_small_patch16_224
    python benchmarks/train_step.py --tiny               # tiny models on CPU in seconds (CI)

Data: a CIFAR-shaped in-memory dataset (random uint8 32x32 images, 10 classes) and D random teacher
features per image (AFT's regulariser; D = 2,944 = DINOv2 ViT-G 1,536 + CLIP ViT-G 1,408).

`project`: an aft.datasets.Task and an aft.train.Trainer exactly as run.py builds them (uint8 images
on the device, resized and normalised per batch there, bf16 autocast, fused Adam, channels-last,
optionally torch.compile); the epoch's batch indices go to the device before the timed window, as
in run.py, and only Trainer.step is timed, with a device synchronisation at both ends.
`upstream`: what the paper's code does: fp32, per-sample PIL transforms (Resize + ToTensor +
Normalize) in a torch DataLoader with num_workers=0, teacher features indexed on the host and
copied per batch, model forward, the same AFT loss, torch.optim.Adam with its defaults, and
`loss.item()` every step. Its timed window includes the loader, since that is where its time goes.

Each pipeline runs method `aft`; the project's also runs `init` (no regulariser), so `aft_over_init`
is AFT's overhead; on CUDA, `host_syncs_per_step` counts the times one project step makes the host
wait for the GPU (0 expected). FLOPs are counted with torch.utils.flop_counter on one step (attention through
the math kernel so it is counted too). Nothing here asserts on time.
"""
import argparse
import math
import time

# first: it finds the project's Python (no environment need be active) and keeps the hub offline
from common import (count_flops, emit, free, host_syncs, max_mem_gb, parse_with_tiny, project_trainer, rates, start,
                    sync, upstream_flags)

import torch
import torch.nn.functional as F

from aft.datasets import Split, Task
from aft.optim import epoch_batches
from aft.methods import get_method
from aft.models import create_classifier
from aft.runtime import seed_everything, speed_settings

TEACHER_DIM = 2944
TINY_MODELS = "test_vit,test_resnet"  # timm's CI models (160 px, < 0.4M parameters)


def model_input_spec(name, image_size):
    """The input size, mean and std the model takes (timm's pretrained config, as aft.models reads it)."""
    import timm
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return image_size or 224, timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD
    return image_size or cfg.input_size[-1], cfg.mean, cfg.std


# ---- data ---------------------------------------------------------------------------------------

def cifar_like(n, num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return images, labels


class UpstreamImages(torch.utils.data.Dataset):
    """torchvision's CIFAR10 dataset in shape: HWC uint8 arrays made PIL images per sample."""

    def __init__(self, images_hwc, labels, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i]), i


# ---- the two pipelines --------------------------------------------------------------------------

def bench_project(args, name, method, task, psi, device, precision, peak):
    free(device)
    n = len(task.train)
    total = args.warmup + args.steps + 1  # +1: the FLOP-counting step
    seed_everything(0)
    speed_settings(device, precision)
    trainer = project_trainer(name, method, task, psi, total, args.batch_size, args.image_size, device, precision,
                              compile=args.compile)

    # run.py's batch order, moved to the device before the timed window (run.py: once per epoch)
    per_epoch = n // min(args.batch_size, n)
    batches = [b for e in range(-(-total // per_epoch)) for b in epoch_batches(n, args.batch_size, 0, e)][:total]
    device_batches = torch.stack(batches).to(device).unbind(0)

    # One real step under the FLOP counter, on the eager model (a compiled graph hides its ops).
    forward, trainer.forward = trainer.forward, trainer.model
    with count_flops() as flops:
        trainer.step(device_batches[0])
    trainer.forward = forward
    step_flops = flops()

    started = time.perf_counter()
    for idx in device_batches[1:1 + args.warmup]:
        trainer.step(idx)
    sync(device)
    warmup_s = time.perf_counter() - started
    syncs = host_syncs(device, trainer.step, device_batches[-1])  # one more, untimed step
    t0 = time.perf_counter()
    for idx in device_batches[1 + args.warmup:]:
        losses = trainer.step(idx)
    sync(device)
    seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(losses[0]))
    size = trainer.train_inputs.size
    record = dict(bench="train_step", pipeline="project", model=name, method=method, device=device.type,
                  precision=precision, compile=args.compile, batch_size=args.batch_size, image_size=size,
                  teacher_dim=psi.shape[1] if trainer.psi is not None else 0, steps=args.steps, warmup_s=round(warmup_s, 2),
                  ms_per_step=round(1000 * seconds / args.steps, 3), gflops_per_step=round(step_flops / 1e9, 2),
                  loss_finite=finite, host_syncs_per_step=syncs, max_mem_gb=max_mem_gb(device))
    del trainer
    return rates(record, seconds, args.batch_size * args.steps, step_flops / args.batch_size, peak)


def bench_upstream(args, name, task, psi, device, peak):
    """The paper-style loop: everything fp32, PIL per sample, loader in the main process."""
    import torchvision.transforms as T
    free(device)
    seed_everything(0)
    upstream_flags()
    size, mean, std = model_input_spec(name, args.image_size)
    transform = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize(mean, std)])
    dataset = UpstreamImages(task.train.inputs.permute(0, 2, 3, 1).numpy(), task.train.labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=0,
                                         drop_last=True)
    model, _ = create_classifier(name, task.num_classes, pretrained=False)
    model = model.to(device).train()
    aft = get_method("aft")
    settings = aft.Settings(learn_scales=True)
    reg = aft(model.head.in_features, [psi.shape[1]], settings).to(device)
    optimizer = torch.optim.Adam([{"params": model.parameters()},
                                  {"params": reg.parameters(), "lr": settings.prior_lr}], lr=1e-4)

    def step(batch):
        x, y, i = batch
        x, y, t = x.to(device), y.to(device), psi[i].to(device)
        logits, phi = model(x)
        loss = F.cross_entropy(logits, y) + 1.0 * reg(phi, t)  # beta 1, as the project's step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    def batches():
        while True:
            yield from loader

    it = batches()
    with count_flops() as flops:
        step(next(it))
    step_flops = flops()
    for _ in range(args.upstream_warmup):
        step(next(it))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.upstream_steps):
        loss = step(next(it))
    sync(device)
    seconds = time.perf_counter() - t0
    record = dict(bench="train_step", pipeline="upstream", model=name, method="aft", device=device.type,
                  precision="fp32", compile=False, batch_size=args.batch_size, image_size=size,
                  teacher_dim=psi.shape[1], steps=args.upstream_steps,
                  ms_per_step=round(1000 * seconds / args.upstream_steps, 3),
                  gflops_per_step=round(step_flops / 1e9, 2), loss_finite=math.isfinite(loss),
                  max_mem_gb=max_mem_gb(device))
    del model, reg, optimizer
    return rates(record, seconds, args.batch_size * args.upstream_steps, step_flops / args.batch_size, peak)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vit_small_patch16_224,resnet50", help="comma-separated timm names")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--image_size", type=int, default=0, help="0: each model's own input size")
    p.add_argument("--steps", type=int, default=50, help="timed steps of the project's path")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--upstream_steps", type=int, default=10, help="timed steps of the upstream loop")
    p.add_argument("--upstream_warmup", type=int, default=2)
    p.add_argument("--n_images", type=int, default=5000, help="images in the CIFAR-shaped dataset")
    p.add_argument("--num_classes", type=int, default=10)
    p.add_argument("--teacher_dim", type=int, default=TEACHER_DIM)
    p.add_argument("--methods", default="aft,init", help="methods timed on the project's path")
    p.add_argument("--no_upstream", action="store_true", help="skip the upstream loop")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (the project's path)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="bf16 peak for frac_of_bf16_peak (0: by name)")
    p.add_argument("--tiny", action="store_true", help=f"{TINY_MODELS}, batch 8, 3 steps: CPU in seconds")
    return parse_with_tiny(p, argv, dict(models=TINY_MODELS, batch_size=8, steps=3, warmup=1, upstream_steps=2,
                                         upstream_warmup=1, n_images=64, teacher_dim=64))


def main(argv=None):
    args = parse_args(argv)
    device, precision, peak = start("train_step", args)

    images, labels = cifar_like(args.n_images, args.num_classes)
    test_images, test_labels = cifar_like(max(args.batch_size, 16), args.num_classes, seed=1)
    task = Task("bench_cifar", "image", args.num_classes, Split(images, labels), Split(test_images, test_labels))
    psi = torch.randn(args.n_images, args.teacher_dim, generator=torch.Generator().manual_seed(2))

    for name in [m for m in args.models.split(",") if m]:
        results = {}
        if not args.no_upstream:
            results["upstream"] = bench_upstream(args, name, task, psi, device, peak)
            emit(results["upstream"])
        for method in [m for m in args.methods.split(",") if m]:
            results[method] = bench_project(args, name, method, task, psi, device, precision, peak)
            emit(results[method])
        summary = dict(bench="train_step", pipeline="summary", model=name, device=device.type, compile=args.compile,
                       targets=dict(speedup_vs_upstream=8.0, aft_over_init=1.05))
        if "upstream" in results and "aft" in results:
            summary["speedup_vs_upstream"] = round(results["aft"]["images_per_s"] / results["upstream"]["images_per_s"], 2)
        if "aft" in results and "init" in results:
            summary["aft_over_init"] = round(results["aft"]["ms_per_step"] / results["init"]["ms_per_step"], 3)
        emit(summary)


if __name__ == "__main__":
    main()

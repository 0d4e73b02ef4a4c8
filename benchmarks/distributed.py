"""Time data-parallel training and sharded extraction over N processes (torchrun, one GPU each, or
CPU processes with gloo); print one JSON line per measurement, from rank 0.

    python benchmarks/distributed.py                  # 2 processes: ViT-S/16 at 224, global batch 128, AFT and init
    python benchmarks/distributed.py --nproc 8
    python benchmarks/distributed.py --tiny           # tiny models on 2 CPU processes in seconds (CI)

Started without torchrun's variables, it starts itself under `python -m torch.distributed.run
--standalone --nproc_per_node=N`. Data: the CIFAR-shaped random images and random teacher features
of train_step.py.

`train`: aft.train.Trainer.step, what `torchrun run.py` runs, on each process's share of global
batches of --batch_size: ms per step (the slowest process's), images/s per process and in all.
`gather`: what the regulariser of the global batch costs: gathering phi (B/N x d per process) from
every process and sending its gradient back (aft.distributed.World.gather_rows forward + backward),
alone, ms per step and its share of the AFT step.
`extract`: the chunked extraction of save_features.py under torchrun (aft.extract's extract_chunks on
every process, then rank 0's merge_chunks into one tensor), random weights: images/s per process
(its own chunks over its own time) and in all (the wall time to the merged features).
Nothing here asserts on time.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

# first: it finds the project's Python (no environment need be active) and keeps the hub offline
from common import emit, parse_with_tiny, project_trainer, sync

import torch

from extract import build_body
from train_step import TEACHER_DIM, cifar_like

from aft import distributed
from aft.datasets import Split, Task
from aft.extract import extract_chunks, merge_chunks, prepare_body
from aft.optim import epoch_batches
from aft.models import resolve_model
from aft.runtime import resolve_device, resolve_precision, seed_everything, speed_settings

TINY_MODELS = "test_vit"


def timed(world, device, fn, reps):
    """The slowest process's seconds for `reps` calls of fn, every process starting together."""
    sync(device)
    world.barrier()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync(device)
    seconds = torch.tensor(time.perf_counter() - t0, dtype=torch.float64, device=device)
    return float(world.max(seconds))


def bench_train(args, world, name, method, task, psi, device, precision):
    n = len(task.train)
    total = args.warmup + args.steps
    seed_everything(0)
    trainer = project_trainer(name, method, task, psi, total, args.batch_size, args.image_size, device, precision,
                              world)
    per_epoch = n // args.batch_size
    batches = [b for e in range(-(-total // per_epoch)) for b in epoch_batches(n, args.batch_size, 0, e)][:total]
    batches = iter(torch.stack(batches).to(device).unbind(0))
    timed(world, device, lambda: trainer.step(next(batches)), args.warmup)
    seconds = timed(world, device, lambda: trainer.step(next(batches)), args.steps)
    phi_dim = trainer.model.phi_dims
    del trainer
    ms = 1000 * seconds / args.steps
    return dict(bench="distributed", pipeline="train", model=name, method=method, device=device.type,
                precision=precision, processes=world.size, batch_size=args.batch_size,
                batch_per_process=args.batch_size // world.size, steps=args.steps, ms_per_step=round(ms, 3),
                images_per_s_per_process=round(args.batch_size / world.size / seconds * args.steps, 2),
                images_per_s=round(args.batch_size / seconds * args.steps, 2)), phi_dim


def bench_gather(args, world, phi_dim, device, aft_ms):
    share = torch.randn(args.batch_size // world.size, phi_dim, device=device, requires_grad=True)

    def gather():
        world.gather_rows(share).sum().backward()

    timed(world, device, gather, args.warmup)
    ms = 1000 * timed(world, device, gather, args.steps) / args.steps
    return dict(bench="distributed", pipeline="gather", device=device.type, processes=world.size,
                rows_per_process=len(share), phi_dim=phi_dim, ms_per_step=round(ms, 4),
                share_of_aft_step=round(ms / aft_ms, 4) if aft_ms else None)


def bench_extract(args, world, name, device, precision):
    spec = resolve_model(name)
    body, _ = build_body(spec, device)
    body = prepare_body(body.requires_grad_(False), device, precision, spec.modality)
    images, _ = cifar_like(args.n_images, 10, seed=3)
    inputs = spec.make_inputs(images, None, args.image_size or None).to(device)
    identity = dict(model=name, dataset="bench", split="train", rows=len(inputs), image_size=args.image_size,
                    precision=precision)
    folder = world.gather_objects(tempfile.mkdtemp(prefix="aft-bench-chunks-") if world.is_main else None)[0]
    sync(device)
    world.barrier()
    t0 = time.perf_counter()
    chunks, _ = extract_chunks(body, inputs, folder, identity, args.chunk_rows, world, args.batch_size, device,
                               precision, f"{name} bench")
    sync(device)
    own = time.perf_counter() - t0
    world.barrier()
    feats = merge_chunks(folder, identity, chunks, 0)[1] if world.is_main else None
    wall = time.perf_counter() - t0
    mine = sum(len(chunks[k]) for k in range(world.rank, len(chunks), world.size))
    per_process = world.gather_objects(round(mine / own, 2))
    record = dict(bench="distributed", pipeline="extract", model=name, device=device.type, precision=precision,
                  processes=world.size, images=len(inputs), chunk_rows=args.chunk_rows, batch_size=args.batch_size,
                  images_per_s_per_process=per_process, images_per_s=round(len(inputs) / wall, 2),
                  features_finite=bool(torch.isfinite(feats).all()) if feats is not None else None)
    if world.is_main:
        import shutil
        shutil.rmtree(folder)
    return record


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="processes torchrun starts (when not started by torchrun)")
    p.add_argument("--models", default="vit_small_patch16_224", help="comma-separated timm names (random weights)")
    p.add_argument("--batch_size", type=int, default=128, help="the global batch")
    p.add_argument("--image_size", type=int, default=0, help="0: each model's own input size")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--n_images", type=int, default=4096, help="images of the CIFAR-shaped dataset")
    p.add_argument("--chunk_rows", type=int, default=512, help="rows per chunk of the extraction")
    p.add_argument("--teacher_dim", type=int, default=TEACHER_DIM)
    p.add_argument("--methods", default="aft,init")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--tiny", action="store_true", help=f"{TINY_MODELS} at 32 px, batch 8: 2 CPU processes in seconds")
    return parse_with_tiny(p, argv, dict(models=TINY_MODELS, batch_size=8, steps=3, warmup=1, n_images=64,
                                         chunk_rows=16, teacher_dim=64, image_size=32))


def main(argv=None):
    args = parse_args(argv)
    if "WORLD_SIZE" not in os.environ:  # start the processes, then relay rank 0's lines
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:])]
        sys.exit(subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
                 .returncode)
    world = distributed.from_environment()
    device = world.device(resolve_device(args.device))
    precision = resolve_precision(args.precision, device)
    distributed.start(world, device)
    speed_settings(device, precision)
    out = emit if world.is_main else (lambda record: None)
    out(dict(bench="distributed", pipeline="env", torch=torch.__version__, device=device.type,
             device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
             processes=world.size, threads_per_process=torch.get_num_threads(), precision=precision, args=vars(args)))
    images, labels = cifar_like(args.n_images, 10)
    task = Task("bench_cifar", "image", 10, Split(images, labels), Split(images[:64], labels[:64]))
    psi = torch.randn(args.n_images, args.teacher_dim, generator=torch.Generator().manual_seed(2))
    try:
        for name in [m for m in args.models.split(",") if m]:
            aft_ms = None
            for method in [m for m in args.methods.split(",") if m]:
                record, phi_dim = bench_train(args, world, name, method, task, psi, device, precision)
                aft_ms = record["ms_per_step"] if method == "aft" else aft_ms
                out(record)
            out(dict(bench_gather(args, world, phi_dim, device, aft_ms), model=name))
            out(bench_extract(args, world, name, device, precision))
    finally:
        distributed.stop(world)


if __name__ == "__main__":
    main()

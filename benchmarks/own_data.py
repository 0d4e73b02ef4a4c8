"""A folder of pictures larger than memory, through the real scripts: save_features.py and run.py on
a synthetic image folder whose decoded size is several times a cap on the process's memory
(RLIMIT_DATA), with the peak resident memory (RSS) of each process; then the same run.py with the
pictures held in memory, without the cap, for the ratio of the two training speeds (does the step
become data-bound when the pictures are read from disk a batch at a time?).

    python benchmarks/own_data.py                     # 26,300 pictures at 320 px (7.5 GiB), 3 x its 2.5 GiB cap
    python benchmarks/own_data.py --tiny              # seconds, no cap (the tests run this)

Prints JSON lines: the machine, the folder, one line per script run (seconds, images/s, peak RSS,
the cap), and the summary (disk over memory images/s of the training step).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

# first: it finds the project's Python (no environment need be active) and keeps the hub offline
from common import emit, parse_with_tiny, start

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pictures", type=int, default=26300, help="pictures in the folder (80%% train, 20%% test)")
    p.add_argument("--decode", type=int, default=320, help="side the pictures are decoded at (AFT_IMAGE_SIZE)")
    p.add_argument("--cap_gib", type=float, default=2.5, help="RLIMIT_DATA of the capped runs (0: none); torch on "
                                                                "a CPU needs 1.1-1.5 GiB, run.py's training about 2")
    p.add_argument("--teacher", default="efficientnet_lite2")
    p.add_argument("--teacher_size", type=int, default=32)
    p.add_argument("--student", default="resnet10t")
    p.add_argument("--student_size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--folder", default="", help="work folder (default: a temporary one, removed after)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--peak_tflops", type=float, default=0.0)
    p.add_argument("--tiny", action="store_true", help="200 pictures at 64 px, no cap, 4 steps")
    return parse_with_tiny(p, argv, dict(pictures=200, decode=64, cap_gib=0.0, steps=4, batch_size=8,
                                         student_size=16, teacher_size=32))


def write_folder(folder, n, seed=0):
    """n small PNGs in two class folders per split, 80% train; returns how many train."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    n_train = int(0.8 * n)
    for i in range(n):
        split, cls = ("train" if i < n_train else "test"), f"class{i % 2}"
        path = os.path.join(folder, "pictures", split, cls, f"{i:06d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3)).astype(np.uint8)).save(path)
    return n_train


def timed_run(args, script, flags, folder, cap_gib, env_extra):
    """One script run in `folder` under a cap on its data segment: (seconds, peak RSS in GiB, stdout)."""
    def cap():
        if cap_gib:
            limit = int(cap_gib * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = dict(os.environ, HF_HUB_OFFLINE="1", AFT_IMAGE_SIZE=str(args.decode), **env_extra)
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *flags], cwd=folder, env=env,
                                preexec_fn=cap, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's own peak, not the largest child's so far
        seconds = time.time() - t0
        out.seek(0)
        err.seek(0)
        if status != 0:
            raise SystemExit(f"{script} failed:\n{err.read()[-3000:]}")
        return seconds, usage.ru_maxrss / 2 ** 20, out.read()  # ru_maxrss: KiB


def main(argv=None):
    args = parse_args(argv)
    start("own_data", args)
    folder = args.folder or tempfile.mkdtemp(prefix="aft-own-data-")
    n_train = write_folder(folder, args.pictures)
    decoded_gib = args.pictures * 3 * args.decode ** 2 / 2 ** 30
    emit(dict(bench="own_data", pipeline="folder", pictures=args.pictures, decode=args.decode,
              decoded_gib=round(decoded_gib, 2), cap_gib=args.cap_gib,
              decoded_over_cap=round(decoded_gib / args.cap_gib, 2) if args.cap_gib else None))
    common = ["--dataset=pictures", "--data_dir=data", f"--device={args.device}", f"--precision={args.precision}"]
    seconds, rss, _ = timed_run(args, "save_features.py", [f"--model_class={args.teacher}",
                                                           f"--image_size={args.teacher_size}", "--batch_size=64",
                                                           *common], folder, args.cap_gib, {})
    # decoding and extraction: the rate is over every picture of both splits
    emit(dict(bench="own_data", pipeline="save_features", images=args.pictures, seconds=round(seconds, 1),
              images_per_s=round(args.pictures / seconds, 1), peak_rss_gib=round(rss, 2), cap_gib=args.cap_gib))
    rates = {}
    for store, cap in (("disk", args.cap_gib), ("memory", 0.0)):
        flags = [f"--model_class={args.student}", f"--image_size={args.student_size}",
                 f"--pretrained_models={args.teacher}", f"--teacher_image_size={args.teacher_size}",
                 f"--steps={args.steps}", f"--eval_steps={args.steps}", f"--batch_size={args.batch_size}",
                 "--eval_batch_size=256", f"--run_name={store}", *common]
        seconds, rss, out = timed_run(args, "run.py", flags, folder, cap, {"AFT_IMAGE_STORE": store})
        with open(os.path.join(folder, "results", f"{store}.json")) as f:
            record = json.load(f)
        rates[store] = args.steps * args.batch_size / record["train_seconds"]  # the steps alone
        emit(dict(bench="own_data", pipeline="run", store=store, steps=args.steps, batch_size=args.batch_size,
                  n_train=n_train, seconds=round(seconds, 1), run_seconds=record["seconds"],
                  images_per_s=round(rates[store], 1), peak_rss_gib=round(rss, 2), cap_gib=cap,
                  streamed="read from disk a batch at a time" in out))
    emit(dict(bench="own_data", pipeline="summary", decoded_over_cap=round(decoded_gib / args.cap_gib, 2)
              if args.cap_gib else None, disk_over_memory=round(rates["disk"] / rates["memory"], 3)))
    if not args.folder:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

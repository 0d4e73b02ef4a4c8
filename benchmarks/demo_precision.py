"""Train the embedded demo (run.py's defaults: tiny_bert on tweets, AFT from MiniLM's cached
features) in bf16 and in fp32, seed by seed, and print the final test accuracies as JSON lines.

    python benchmarks/demo_precision.py              # on a GPU: bf16 autocast vs fp32 (TF32 matmuls)
    python benchmarks/demo_precision.py --tiny       # a few steps on 2% of the rows, on a CPU (CI)

Seeds run in pairs (bf16, then fp32) until --seeds are done or another pair would end past
--budget_s, so under a time limit the run still ends with its summary line. The MiniLM features
must be cached already (`python save_features.py`): this check trains, it does not extract.
"""
import argparse
import contextlib
import dataclasses
import os
import statistics
import sys
import time

# common before aft: it keeps the Hugging Face hub offline
from common import emit as emit_json, parse_with_tiny

from aft.config import Config
from aft.experiment import run
from aft.features import feature_path

PRECISIONS = ("bf16", "fp32")


def emit(record):
    emit_json(dict(bench="demo_bf16_vs_fp32", **record))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget_s", type=float, default=0, help="no new pair of runs past this (0: no limit)")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=Config.steps)
    p.add_argument("--eval_steps", type=int, default=Config.eval_steps)
    p.add_argument("--train_frac", type=float, default=Config.train_frac)
    p.add_argument("--features_dir", default=Config.features_dir)
    p.add_argument("--out_dir", default=os.path.join(os.environ.get("OUT", "."), "demo_results"))
    p.add_argument("--tiny", action="store_true", help="4 steps on 2%% of the train rows, one evaluation, 2 seeds")
    return parse_with_tiny(p, argv, dict(steps=4, eval_steps=4, train_frac=0.02, seeds=2))


def main(argv=None):
    args = parse_args(argv)
    cfg = Config(device=args.device, steps=args.steps, eval_steps=args.eval_steps, train_frac=args.train_frac,
                 features_dir=args.features_dir, out_dir=args.out_dir)
    cache = feature_path(cfg.features_dir, cfg.pretrained_models, cfg.dataset)
    if not os.path.exists(cache):
        emit(dict(skipped=f"no cached features at {cache}: run `python save_features.py` first "
                          "(or, for the device, `sh benchmarks/gpu_check.sh --prepare` and carry gpu_carry)"))
        return
    started, acc = time.time(), {p: [] for p in PRECISIONS}
    for seed in range(args.seeds):
        pair_s = (time.time() - started) / seed if seed else 0  # the mean time of a pair so far
        if args.budget_s and time.time() - started + pair_s > args.budget_s:
            break
        for precision in PRECISIONS:
            t = time.time()
            with contextlib.redirect_stdout(sys.stderr):  # run's progress lines; stdout is JSON only
                r = run(dataclasses.replace(cfg, seed=seed, precision=precision,
                                            run_name=f"demo_{precision}_seed{seed}"))
            acc[precision].append(r.final_acc)
            emit(dict(seed=seed, precision=precision, device=r.device, final_acc=r.final_acc,
                      evals=[e["acc"] for e in r.evals], seconds=round(time.time() - t, 1)))
    summary = dict(pipeline="summary", seeds=len(acc["bf16"]), steps=args.steps,
                   bf16_minus_fp32=[round(b - f, 4) for b, f in zip(acc["bf16"], acc["fp32"])])
    for precision, values in acc.items():
        if len(values) > 1:
            summary[precision] = dict(mean=round(statistics.mean(values), 4), std=round(statistics.stdev(values), 4))
    emit(summary)


if __name__ == "__main__":
    main()

"""What a researcher reads after a sweep: one table from the results JSONs that run.py writes.

    python -m aft.results results/sweep_cifar10                   # the markdown table
    python -m aft.results results/a results/b --plot beta.png     # and accuracy against beta

Runs are grouped by dataset, downstream model, pre-trained models, method and train_frac. In each
group the hyperparameters (beta = --prec, and --lr when several were run) are chosen on the
validation runs (--use_val=True) by their mean accuracy over seeds; the test runs at the chosen
values give the mean, std and number of seeds. Without validation runs the best on test is taken
and marked so (an optimistic figure). The last column is the test error divided by standard
transfer learning's (method init, same dataset, model and train_frac), and the last table its mean
over the table's rows per method: the paper's headline figure.

The API is `load_results(dirs) -> records`, `summarise(records) -> rows`, `markdown(rows) -> str`,
`chosen(rows)` and `plot(records, rows, path)`.
"""
import argparse
import glob
import json
import math
import os
import statistics
import sys
from collections import defaultdict

from aft.config import BOOKKEEPING
from aft.errors import UserError, main_guard
from aft.methods import METHODS, hyperparameters
from aft.record import RunRecord

# The method whose error is the unit of the last column: standard transfer learning.
BASELINE = next(name for name, method in METHODS.items() if method.baseline)
# Flags that do not change what a run computes (where files go, logging, speed), plus those the
# table handles itself. Every other flag (steps, batch_size, optimizer, ...) is part of a run's
# "setting": runs of different settings are never averaged together.
NOT_SETTING = BOOKKEEPING | {"seed", "prec", "lr", "use_val", "dataset", "model_class", "pretrained_models",
                             "method", "train_frac"}
# The methods' own hyperparameters, which one method reads and another ignores: left out when a method
# is matched with its baseline.
METHOD_SPECIFIC = {f.name for f in hyperparameters()}


# ---- reading --------------------------------------------------------------------------------------

def load_results(dirs):
    """Every results JSON under the folders (recursively), as flat records. Files that are not
    results of run.py (other JSONs, an unreadable file) are skipped with a note on stderr."""
    records, skipped = [], []
    for folder in dirs:
        if not os.path.isdir(folder):
            raise UserError(f"{folder} is not a folder; give the --out_dir of run.py (default ./results)")
        for path in sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)):
            if f"{os.sep}wandb{os.sep}" in os.path.relpath(path, folder).join([os.sep, os.sep]):
                continue  # Weights & Biases' own files (run.py --use_wandb keeps them in {out_dir}/wandb)
            record = read_record(path)
            (records if record else skipped).append(record or path)
    if skipped:
        print(f"note: skipped {len(skipped)} JSON files that are not results of run.py: "
              f"{', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}", file=sys.stderr)
    return records


def read_record(path):
    try:
        res = RunRecord.read(path)
        cfg = res.config
        method = cfg["method"]
        facts = METHODS[method]
        return dict(
            dataset=res.dataset or cfg["dataset"], model=cfg["model_class"], method=method,
            teachers=cfg.get("pretrained_models", "") if facts.uses_teacher else "",
            train_frac=float(cfg.get("train_frac", 1.0)),
            prec=float(cfg["prec"]) if facts.takes_beta() else 0.0, lr=float(cfg["lr"]), seed=int(cfg["seed"]),
            split="val" if cfg.get("use_val") or res.eval_split == "val" else "test",
            setting=tuple(sorted((k, v if isinstance(v, (str, int, float, bool, type(None))) else json.dumps(v))
                                 for k, v in cfg.items() if k not in NOT_SETTING)),
            acc=float(res.final_acc), run_name=res.run_name, path=path, mtime=os.path.getmtime(path))
    except (UserError, OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# ---- summarising ----------------------------------------------------------------------------------

GROUP_KEYS = ("dataset", "model", "teachers", "method", "train_frac", "setting")


def panel_key(r):
    """What a method and its baseline share: the task, the model and the setting."""
    return (r["dataset"], r["model"], r["train_frac"], tuple(kv for kv in r["setting"] if kv[0] not in METHOD_SPECIFIC))


def _mean_std(values):
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(records):
    """One row per (dataset, model, teachers, method, train_frac, setting), in a stable order:
    dict(dataset, model, teachers, method, train_frac, setting, prec, lr, chosen_on, val_mean, val_n,
         mean, std, n, norm_err).

    chosen_on: "val" (best mean validation accuracy), "test" (no validation runs: best mean test
    accuracy, optimistic), or "only" (a single value was run, nothing to choose). Ties go to the
    smaller beta, then the smaller lr. A rerun of the same seed counts once (the newest file)."""
    groups = defaultdict(dict)
    for r in sorted(records, key=lambda r: r["mtime"]):  # the newest file of a (seed, split) wins
        key = tuple(r[k] for k in GROUP_KEYS)
        groups[key][(r["prec"], r["lr"], r["split"], r["seed"])] = r
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[4], str(k[5]), k[3] != BASELINE, k[3], k[2])):
        accs = defaultdict(lambda: defaultdict(list))  # split -> (prec, lr) -> [acc over seeds]
        for (prec, lr, split, seed), r in sorted(groups[key].items()):
            accs[split][(prec, lr)].append(r["acc"])
        candidates = sorted(set(accs["val"]) | set(accs["test"]))
        if len(candidates) == 1:
            best, chosen_on = candidates[0], "only"
        else:
            chosen_on = "val" if accs["val"] else "test"
            scored = accs[chosen_on]
            best = max(sorted(scored), key=lambda hp: statistics.fmean(scored[hp]))  # max keeps the first tie
        mean, std = _mean_std(accs["test"].get(best, []))
        val_mean, _ = _mean_std(accs["val"].get(best, []))
        rows.append(dict(zip(GROUP_KEYS, key), prec=best[0], lr=best[1], chosen_on=chosen_on,
                         val_mean=val_mean, val_n=len(accs["val"].get(best, [])), mean=mean, std=std,
                         n=len(accs["test"].get(best, [])), norm_err=None))
    baseline = {panel_key(r): r for r in rows if r["method"] == BASELINE and r["mean"] is not None}
    for r in rows:
        base = baseline.get(panel_key(r))
        if r["mean"] is not None and base is not None and base["mean"] < 1:
            r["norm_err"] = (1 - r["mean"]) / (1 - base["mean"])
    return rows


def headline(rows):
    """Per method: the normalised error averaged over the table's rows (dataset x model pairs) that
    have one, as in the paper's summary figure. [(method, mean normalised error, number of rows)]"""
    per_method = defaultdict(list)
    for r in rows:
        if r["norm_err"] is not None:
            per_method[r["method"]].append(r["norm_err"])
    order = sorted(per_method, key=lambda m: (m != BASELINE, m))
    return [(m, statistics.fmean(per_method[m]), len(per_method[m])) for m in order]


def chosen(rows):
    """The chosen (method, beta, lr) of each row, for scripts: `python -m aft.results DIR --chosen`."""
    return [(r["method"], r["prec"], r["lr"]) for r in rows]


# ---- printing -------------------------------------------------------------------------------------

def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def varying(settings):
    """The flags whose values differ between these settings (each a tuple of (flag, value))."""
    dicts = [dict(s) for s in settings]
    return sorted(k for k in {k for d in dicts for k in d} if len({repr(d.get(k)) for d in dicts}) > 1)


def setting_text(setting, keys):
    d = dict(setting)
    return ", ".join(f"{k}={d.get(k, '-')}" for k in keys) or "-"


def markdown(rows):
    """The table (accuracies in %), then the headline table. Columns that are the same on every
    row (train_frac, lr, the setting) are left out."""
    if not rows:
        return "no results"
    show_frac = len({r["train_frac"] for r in rows}) > 1
    show_lr = len({r["lr"] for r in rows}) > 1
    setting_keys = varying(r["setting"] for r in rows)
    head = ["dataset", "model", "pre-trained models", "method"] + (["train_frac"] if show_frac else []) + \
        (["setting"] if setting_keys else []) + ["beta"] + (["lr"] if show_lr else []) + \
        ["chosen on", "val acc", "test acc", "n seeds", "err / STL err"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    chosen_text = {"val": "val", "test": "test (optimistic)", "only": "-"}
    for r in rows:
        test = "-" if r["mean"] is None else f"{_pct(r['mean'])} ± {_pct(r['std'])}"
        cells = [r["dataset"], r["model"], r["teachers"] or "-", r["method"]] + \
            ([f"{r['train_frac']:g}"] if show_frac else []) + \
            ([setting_text(r["setting"], setting_keys)] if setting_keys else []) + \
            [f"{r['prec']:g}" if METHODS[r["method"]].takes_beta() else "-"] + ([f"{r['lr']:g}"] if show_lr else []) + \
            [chosen_text[r["chosen_on"]], _pct(r["val_mean"]), test, str(r["n"]),
             "-" if r["norm_err"] is None else f"{r['norm_err']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    summary = headline(rows)
    if summary:
        lines += ["", f"Error normalised by standard transfer learning's ({BASELINE}), averaged over "
                      "datasets and models (lower is better):", "",
                  "| method | err / STL err | rows averaged |", "|---|---|---|"]
        lines += [f"| {m} | {e:.3f} | {k} |" for m, e, k in summary]
    missing = [r for r in rows if r["mean"] is None]
    if missing:
        lines += ["", f"{len(missing)} row(s) have no test runs at the chosen beta yet: run them with "
                      "--use_val=False at that --prec."]
    return "\n".join(lines)


# ---- plotting -------------------------------------------------------------------------------------

def plot(records, rows, path):
    """Accuracy against beta (log axis) per method, one panel per dataset (and model, train_frac,
    setting): each curve from its validation runs where it has some, else from its test runs (the
    labels say which when a panel mixes them); mean and std over seeds; the chosen beta starred;
    the baseline (init) a horizontal line with its std band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lr_of = {tuple(r[k] for k in GROUP_KEYS): r["lr"] for r in rows}  # curves at the chosen lr
    chosen_prec = {(panel_key(r), r["method"], r["teachers"]): (r["prec"], r["chosen_on"]) for r in rows}
    panels = defaultdict(list)
    for r in records:
        key = tuple(r[k] for k in GROUP_KEYS)
        if r["lr"] == lr_of.get(key):
            panels[panel_key(r)].append(r)
    setting_keys = varying(key[3] for key in panels)
    if not panels:
        raise UserError("nothing to plot")
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = sorted({r["method"] for r in records} - {BASELINE})
    for ax, key in zip(axes.flat, sorted(panels, key=str)):
        (dataset, model, frac, setting), recs = key, panels[key]
        curves = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))  # curve -> split -> prec -> seed -> acc
        for r in sorted(recs, key=lambda r: r["mtime"]):  # the newest file of a seed wins, as in summarise
            curves[(r["method"], r["teachers"])][r["split"]][r["prec"]][r["seed"]] = r["acc"]
        # Each curve on validation where it has validation runs (where beta is chosen), else on test.
        shown = {curve: "val" if "val" in by_split else "test" for curve, by_split in curves.items()}
        mixed = len(set(shown.values())) > 1
        for (method, teachers), split in sorted(shown.items(), key=lambda kv: (kv[0][0] != BASELINE, kv[0])):
            by_prec = curves[(method, teachers)][split]
            tag = f" ({split})" if mixed else ""
            if method == BASELINE:
                accs = [a for c in by_prec.values() for a in c.values()]
                mean, std = _mean_std(accs)
                ax.axhline(100 * mean, color="black", linestyle="--", label=f"{BASELINE} (STL{', ' + split if mixed else ''}), n={len(accs)}")
                ax.axhspan(100 * (mean - std), 100 * (mean + std), color="black", alpha=0.08)
                continue
            precs = sorted(p for p in by_prec if p > 0)  # beta = 0 has no place on a log axis
            stats = [_mean_std(list(by_prec[p].values())) for p in precs]
            several = len({t for m, t in curves if m == method}) > 1
            label = (f"{method} ({teachers})" if several else method) + tag
            color = colors[methods.index(method) % len(colors)]
            ax.errorbar(precs, [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o",
                        capsize=3, color=color, label=label)
            best, chosen_on = chosen_prec.get((key, method, teachers), (None, None))
            if best in precs and chosen_on == split:  # the chosen beta: a star on the curve it was chosen on
                ax.plot([best], [100 * stats[precs.index(best)][0]], marker="*", markersize=16, color=color,
                        markeredgecolor="black", linestyle="none", label=f"{method}: chosen beta {best:g}")
        ax.set_xscale("log")
        title = f"{dataset} / {model}" + (f" / train_frac {frac:g}" if frac != 1 else "") + \
            (f"\n{setting_text(setting, setting_keys)}" if setting_keys else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("beta (--prec)")
        ax.set_ylabel("accuracy (%)" if mixed else f"{split} accuracy (%)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- command line ---------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m aft.results", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders of results JSONs (run.py --out_dir)")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw accuracy against beta into this PNG")
    parser.add_argument("--chosen", action="store_true",
                        help="print only the chosen 'method beta lr' per row, one per line (for scripts)")
    args = parser.parse_args(argv)

    def go():
        records = load_results(args.dirs)
        if not records:
            raise UserError(f"no results of run.py under {', '.join(args.dirs)}; run.py writes them to --out_dir")
        rows = summarise(records)
        if args.chosen:
            for method, prec, lr in chosen(rows):
                print(f"{method} {prec:g} {lr:g}")
        else:
            print(markdown(rows))
        if args.plot:
            plot(records, rows, args.plot)
            print(f"plot: {args.plot}", file=sys.stderr if args.chosen else sys.stdout)

    main_guard(go)


if __name__ == "__main__":
    main()

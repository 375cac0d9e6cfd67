"""What pre-training is worth: the classifier fine-tuned, as a linear probe and from scratch, at several shares
of the labelled training subjects, each over several training seeds with the split fixed.

    python bench/compare.py [--seeds 5] [--fractions 1 0.25 0.1] [--variants finetune linear_probe from_scratch]
                            [--checkpoint OUTPUT_PATH/best_miram_mae.pth] [settings flags]   (`make compare`)

Every run is its own `python classify.py --seed S --cls-label-fraction F --output-path OUTPUT_PATH/compare/<run>`,
so a finished run is kept and skipped when the command is repeated: an interrupted comparison resumes where
it stopped. Writes OUTPUT_PATH/compare.json (every run's figures and each group's
mean and standard deviation), compare.md (the table) and compare.png (AUROC and pointing game against labels).
"""
import argparse
import dataclasses
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import add_config_args, load_config, settings_flags  # noqa: E402
from records import run_info, save_json  # noqa: E402

VARIANT_FLAGS = {"finetune": [], "linear_probe": ["--linear-probe"], "from_scratch": ["--from-scratch"]}
FIGURES = (("auroc", "AUROC", 3), ("pointing_game", "pointing game", 2), ("median_mass", "median mass / share", 1))


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM label efficiency: fine-tune vs linear probe vs from scratch")
    p.add_argument("--seeds", type=int, default=5, help="training seeds per variant and fraction (1..N)")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25, 0.1],
                   help="shares of the labelled training subjects (CLS_LABEL_FRACTION)")
    p.add_argument("--variants", nargs="+", choices=tuple(VARIANT_FLAGS), default=list(VARIANT_FLAGS))
    p.add_argument("--checkpoint", default=None, help="pre-trained MAE (default OUTPUT_PATH/best_miram_mae.pth)")
    return add_config_args(p, "classify")


def run_dir(cfg, variant, fraction, seed):
    return os.path.join(cfg.OUTPUT_PATH, "compare", f"{variant}_labels{fraction:g}_seed{seed}")


def one_run(args, cfg, variant, fraction, seed):
    """-> the run's classification_metrics JSON, running classify.py only where it has not finished."""
    # after the settings given to this script: the run's own seed, labels and folder win
    flags = [*VARIANT_FLAGS[variant], "--checkpoint", os.path.abspath(args.checkpoint or cfg.artifact("mae")),
             *settings_flags(args), "--seed", str(seed), "--cls-label-fraction", str(fraction)]
    return classify_once(cfg, run_dir(cfg, variant, fraction, seed), flags,
                         f"{variant:<13} labels {fraction:<5g} seed {seed}", variant)


def classify_once(cfg, out, flags, label, variant="finetune"):
    """-> the classification_metrics JSON of `python classify.py --n-viz 0 *flags --output-path out`, running it
    only where that file is missing (a finished run is kept: an interrupted benchmark resumes)."""
    metrics = dataclasses.replace(cfg, OUTPUT_PATH=out).artifact(
        "classification_metrics", "" if variant == "finetune" else "_" + variant)
    if not os.path.isfile(metrics):
        os.makedirs(out, exist_ok=True)
        command = [sys.executable, "classify.py", "--n-viz", "0", *flags, "--output-path", out]  # run in ROOT
        started = time.time()
        with open(os.path.join(out, "classify.log"), "w") as log:
            done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            sys.exit(f"{' '.join(label.split())}: classify.py failed (exit {done.returncode}); "
                     f"see {os.path.join(out, 'classify.log')}")
        print(f"  {label}: {time.time() - started:.0f} s", flush=True)
    with open(metrics) as f:
        return json.load(f)


def settings_tag(cfg):
    """8 hex digits of the classifier settings a run uses (flags, preset and environment resolved): a finished
    run is kept only for the same settings."""
    read = {k: v for k, v in vars(cfg).items()
            if k.startswith(("CLS_", "AUGMENT", "FOREGROUND")) or k in ("LAYER_DECAY", "BATCH_SIZE", "AMP")}
    return hashlib.sha1(json.dumps(read, sort_keys=True).encode()).hexdigest()[:8]


def view_figures(view, heatmap):
    """FIGURES of one set in a classification_metrics.json (its top level, or its "transfer")."""
    loc = view["localization"][heatmap]
    return {"auroc": view["auroc"], "pointing_game": loc["pointing_game"],
            "median_mass": loc["mass_inside_over_share_median"]}


def figures_of(m):
    return {**view_figures(m, m["default_heatmap"]), "optimizer_steps": m["optimizer_steps"],
            "train_slices": m["n_train_slices"], "train_subjects": m["n_train_subjects"]}


def summarise(runs):
    """runs: [{"variant", "fraction", "seed", figures...}] -> one row per (variant, fraction)."""
    groups = {}
    for r in runs:
        groups.setdefault((r["variant"], r["fraction"]), []).append(r)
    rows = []
    for (variant, fraction), rs in groups.items():
        row = {"variant": variant, "fraction": fraction, "seeds": len(rs), "train_slices": rs[0]["train_slices"],
               "train_subjects": rs[0]["train_subjects"], "optimizer_steps": rs[0]["optimizer_steps"]}
        for key, _, _ in FIGURES:
            row[key] = mean_sd([r[key] for r in rs])
        rows.append(row)
    return rows


def mean_sd(values):
    """{"mean", "sd"} of one figure over seeds (the sample standard deviation; 0 for a single seed)."""
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def difference(a, b, key):
    """Mean of a minus mean of b, and whether it exceeds twice its standard error (the seeds' spread)."""
    d = a[key]["mean"] - b[key]["mean"]
    se = math.sqrt(a[key]["sd"] ** 2 / a["seeds"] + b[key]["sd"] ** 2 / b["seeds"])
    return d, abs(d) > 2 * se


def markdown(rows):
    out = ["| variant | labelled training slices (subjects) | optimizer steps | seeds | "
           + " | ".join(title for _, title, _ in FIGURES) + " |", "|" + "---|" * (4 + len(FIGURES))]
    for r in sorted(rows, key=lambda r: (-r["fraction"], list(VARIANT_FLAGS).index(r["variant"]))):
        cells = [f"{r[k]['mean']:.{d}f} ± {r[k]['sd']:.{d}f}" for k, _, d in FIGURES]
        out.append(f"| {r['variant']} | {r['fraction']:.0%}: {r['train_slices']} ({r['train_subjects']}) | "
                   f"{r['optimizer_steps']} | {r['seeds']} | " + " | ".join(cells) + " |")
    by = {(r["variant"], r["fraction"]): r for r in rows}
    notes = []
    for fraction in sorted({r["fraction"] for r in rows}, reverse=True):
        tuned = by.get(("finetune", fraction))
        for other in ("linear_probe", "from_scratch"):
            if tuned is None or (other, fraction) not in by:
                continue
            parts = []
            for key, title, digits in FIGURES[:2]:
                d, clear = difference(tuned, by[(other, fraction)], key)
                parts.append(f"{title} {d:+.{digits}f} ({'beyond' if clear else 'within'} the seeds' spread)")
            notes.append(f"- {fraction:.0%} of the labels, fine-tuned minus {other}: " + ", ".join(parts))
    if notes:
        out += ["", "Differences count as beyond the seeds' spread where they exceed twice their standard error.",
                ""] + notes
    return "\n".join(out) + "\n"


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (key, title, _) in zip(axes, FIGURES):
        for variant in VARIANT_FLAGS:
            rs = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["fraction"])
            if rs:
                ax.errorbar([100 * r["fraction"] for r in rs], [r[key]["mean"] for r in rs],
                            yerr=[r[key]["sd"] for r in rs], marker="o", capsize=3, label=variant)
        ax.set_xscale("log")
        percents = sorted({100 * r["fraction"] for r in rows})
        ax.set_xticks(percents, [f"{p:g}" for p in percents])
        ax.minorticks_off()
        ax.set_xlabel("labelled training subjects (%)")
        ax.set_title(f"{title} (mean ± sd over seeds)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    print(f"{len(args.variants)} variants x {len(args.fractions)} label fractions x {args.seeds} seeds "
          f"(finished runs under {os.path.join(cfg.OUTPUT_PATH, 'compare')} are kept)", flush=True)
    runs = []
    for fraction in args.fractions:
        for variant in args.variants:
            for seed in range(1, args.seeds + 1):
                runs.append({"variant": variant, "fraction": fraction, "seed": seed,
                             **figures_of(one_run(args, cfg, variant, fraction, seed))})
    rows = summarise(runs)
    table = markdown(rows)
    save_json(cfg.artifact("compare"), {"runs": runs, "summary": rows, "run": run_info()})
    with open(cfg.artifact("compare_table"), "w") as f:
        f.write(table)
    plot(rows, cfg.artifact("compare_plot"))
    print(table + "wrote\n  " + "\n  ".join(cfg.artifact(n) for n in ("compare", "compare_table", "compare_plot")))
    return rows


if __name__ == "__main__":
    main()

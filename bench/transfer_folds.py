"""The transfer set's own few labels: the classifier fine-tuned from the pre-trained encoder on all but one of
the set's heads and scored on the head left out, each head in turn (leave one subject out).

    MIRAM_PRESET=demo python bench/transfer_folds.py [--data DIR] [--seeds 1]
                                                    [--checkpoint OUTPUT_PATH/best_miram_mae.pth] [settings flags]

A handful of heads is too few for one drawn split (the builtin set's would hold out its one-slice head, with
no tumor). Every head whose labelled slices hold both classes is held out in turn; a head with one class has
no AUROC of its own and trains in every fold. Each fold is its own `python classify.py --dataset-path DATA
--val-subjects HEAD --transfer-path ""`, kept once finished (the benchmark resumes). --data defaults to the
builtin transfer set (TRANSFER_PATH=builtin, built on first use). Writes OUTPUT_PATH/transfer_folds.json and
transfer_folds.md.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from compare import FIGURES, classify_once, figures_of, mean_sd, settings_tag  # noqa: E402  (bench/ is this script's folder)
from config import BUILTIN_TRANSFER_PATH, add_config_args, load_config, settings_flags  # noqa: E402
from records import run_info, save_json  # noqa: E402


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM on the transfer set's own labels: leave one head out")
    p.add_argument("--data", default=None, help=f"a labelled set of a few subjects (default: {BUILTIN_TRANSFER_PATH})")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per fold (1..N)")
    p.add_argument("--checkpoint", default=None, help="pre-trained MAE (default OUTPUT_PATH/best_miram_mae.pth)")
    return add_config_args(p, "classify")


def held_out_heads(data):
    """The subjects of a SliceSet whose labelled slices hold both classes, in order of appearance."""
    heads = {}
    for subject, label, known in zip(data.subjects, data.labels.tolist(), data.has_mask.tolist()):
        if known:
            heads.setdefault(subject, set()).add(label)
    return [s for s, classes in heads.items() if len(classes) == 2]


def markdown(rows, summary):
    out = ["| held-out head | slices (tumor) | seeds | AUROC | pointing game | median mass / share | training slices "
           "| optimizer steps |", "|---|---|---|---|---|---|---|---|"]

    def figure(r, key, digits):
        return f"{r[key]['mean']:.{digits}f}" + (f" ± {r[key]['sd']:.{digits}f}" if r["n"] > 1 else "")
    for r in rows:
        out.append(f"| {r['head']} | {r['slices']} ({r['tumor']}) | {r['n']} | "
                   + " | ".join(figure(r, k, d) for k, _, d in FIGURES)
                   + f" | {r['train_slices']} | {r['optimizer_steps']} |")
    out.append(f"| mean over {summary['n']} heads | | | " + " | ".join(figure(summary, k, d) for k, _, d in FIGURES)
               + " | | |")
    return "\n".join(out) + "\n"


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    from dataset import load_slices
    from makedata import build_transfer_data
    data_path = os.path.abspath(args.data or BUILTIN_TRANSFER_PATH)
    if args.data is None and not os.path.isdir(os.path.join(data_path, "HR")):
        print(f"building the transfer set in {data_path}", flush=True)
        build_transfer_data(data_path)
    checkpoint = os.path.abspath(args.checkpoint or cfg.artifact("mae"))
    if not os.path.isfile(checkpoint):
        sys.exit(f"{checkpoint}: no pre-trained MAE (run `python train.py` first, or pass --checkpoint)")
    data = load_slices(data_path, 32, cfg.SUBJECT_PATTERN, True, cfg.SLICE_AXIS, cfg.MAX_PIXELS)
    heads = held_out_heads(data)
    if not heads:
        sys.exit(f"{data_path}: no subject with both tumor and tumor-free labelled slices to hold out")
    print(f"{len(heads)} heads held out in turn x {args.seeds} seeds (finished folds under "
          f"{os.path.join(cfg.OUTPUT_PATH, 'transfer_folds')} are kept)", flush=True)
    rows, runs = [], []
    for head in heads:
        figures = []
        for seed in range(1, args.seeds + 1):
            out = os.path.join(cfg.OUTPUT_PATH, "transfer_folds", f"{head}_{settings_tag(cfg)}_seed{seed}")
            # after the settings given to this script: the fold's data, held-out head and seed win
            flags = ["--checkpoint", checkpoint, *settings_flags(args), "--dataset-path", data_path,
                     "--val-subjects", head, "--transfer-path", "", "--seed", str(seed)]
            figures.append(figures_of(classify_once(cfg, out, flags, f"{head} held out, seed {seed}")))
            runs.append({"head": head, "seed": seed, **figures[-1]})
        own = [i for i, s in enumerate(data.subjects) if s == head and data.has_mask[i]]
        rows.append({"head": head, "n": len(figures), "slices": len(own), "tumor": int(data.labels[own].sum()),
                     "train_slices": figures[0]["train_slices"], "optimizer_steps": figures[0]["optimizer_steps"],
                     **{k: mean_sd([f[k] for f in figures]) for k, _, _ in FIGURES}})
    # each head weighs alike, each seed's figure within it already averaged
    summary = {"n": len(rows), **{k: mean_sd([r[k]["mean"] for r in rows]) for k, _, _ in FIGURES}}
    table = markdown(rows, summary)
    save_json(cfg.artifact("transfer_folds"), {"runs": runs, "heads": rows, "summary": summary, "data": data_path,
                                               "checkpoint": checkpoint, "run": run_info()})
    with open(cfg.artifact("transfer_folds_table"), "w") as f:
        f.write(table)
    print(table + "wrote\n  " + "\n  ".join(cfg.artifact(n) for n in ("transfer_folds", "transfer_folds_table")))
    return rows, summary


if __name__ == "__main__":
    main()

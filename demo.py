"""The whole pipeline on the embedded demo data, each phase as its own command, then one screen of results.

    python demo.py [--slice PATH] [settings flags, passed to every phase]       (what `make demo` runs)

Runs train.py, then train.py --inpaint and evaluate.py beside classify.py (they need only the pre-trained
MAE), then classify.py --predict, enhance.py and export_deploy.py (MIRAM_PRESET=demo unless a preset is given),
stops at the first that fails, and ends with each phase's wall time, where it went, and the headline figures,
also written to OUTPUT_PATH/demo_summary.json.
"""
import argparse
import datetime
import json
import os
import re
import sys
import time

from config import add_config_args, load_config, settings_env
from records import output_lock, run_info, run_phase, save_json


ROOT = os.path.dirname(os.path.abspath(__file__))
# a validation slice (a subject training never sees), with a synthetic tumor
DEMO_SLICE = os.path.join("data", "demo", "Brain_MRI", "HR", "mni_axial_slab04_087.tif")


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM demo: every phase, then a summary")
    p.add_argument("--slice", default=DEMO_SLICE, help="the slice classify.py --predict and enhance.py run on")
    p.add_argument("--export-iters", default="20", help="export_deploy.py --iters (make bench times 50)")
    p.add_argument("--skip-spec", action="store_true", help="export_deploy.py --skip-spec --skip-peer: time the trained models only")
    p.add_argument("--full-benchmark", action="store_true",
                   help="export_deploy.py without --short: every row (spec-size MAE, all-patches classifier, torch-bf16)")
    return add_config_args(p)


# the training log of each phase that trains: the seconds its epochs took, out of the phase's
TRAINING_LOGS = {"pre-training": "train_log", "inpainting fine-tune": "inpaint_log", "classification": "classifier_log"}


def phases(args, cfg):
    """The pipeline as steps run in turn. A step is one or more lanes, run side by side; a lane is phases
    (name, command, the suffix of its stage_times file) run in turn. The phases that need only the
    pre-trained MAE share the cores, a lane each: a model of the demo's size gains little from a second
    thread, so two phases on one thread each end sooner than one after the other (docs/METHODS.md)."""
    restored = os.path.join(cfg.OUTPUT_PATH, "restored_demo" + os.path.splitext(args.slice)[1])
    # the showcase: a slice chosen before training (--slice), called at the validation split's threshold
    deploy = (["export_deploy.py", "--iters", args.export_iters] + (["--skip-spec", "--skip-peer"] if args.skip_spec else [])
              + ([] if args.full_benchmark else ["--short"]))
    return [[[("pre-training", ["train.py"], "pretrain")]],
            [[("inpainting fine-tune", ["train.py", "--inpaint"], "inpaint"), ("evaluation", ["evaluate.py"], "evaluate")],
             [("classification", ["classify.py"], "classify")]],
            [[("one prediction", lambda: ["classify.py", "--predict", args.slice, *validation_threshold(cfg)], None)]],
            [[("restoration", ["enhance.py", "--input", args.slice, "--output", restored, "--scale", "coarse",
                               "--overwrite"], None)]],
            [[("deployment", deploy, "export")]]]


def validation_threshold(cfg):
    """["--cls-threshold", T] with T the operating threshold classify.py chose on the validation split
    (tumor.OPERATING_RULE), read when the prediction runs, after the classifier; [] where it chose none."""
    chosen = ((load(cfg, "classification_metrics") or {}).get("operating_point") or {}).get("threshold")
    return ["--cls-threshold", f"{chosen:.6g}"] if chosen is not None and 0 < chosen < 1 else []


def lane_threads(lanes, cpus=None):
    """Threads for each of a step's lanes: the cores shared out (at least one each); None for a lane alone,
    which keeps the libraries' own choice."""
    if len(lanes) == 1:
        return None
    return max(1, (cpus or os.cpu_count() or 1) // len(lanes))


def run_step(lanes, env, say_probability):
    """Runs a step's lanes side by side, each lane's phases in turn; the output of lanes side by side is
    prefixed with its phase. -> [(name, command, stage suffix, exit status, seconds, start)] in phase order;
    a lane stops at its first failure."""
    import threading
    threads = lane_threads(lanes)
    lane_env = dict(env) if threads is None else {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    results = [[] for _ in lanes]

    def run_lane(k):
        for name, cmd, stages in lanes[k]:
            cmd = cmd() if callable(cmd) else cmd  # a command that reads what an earlier phase wrote
            print(f"\n=== {name}: python {' '.join(cmd)}" + (f" (beside the other lane, {threads} thread(s))"
                                                           if threads else ""), flush=True)
            t0 = time.time()

            def on_line(line):
                if "--predict" in cmd:
                    say_probability(line)
            code, seconds = run_phase(cmd, lane_env, ROOT, on_line, prefix=f"{name} | " if threads else "")
            results[k].append((name, cmd, stages, code, seconds, t0))
            if code:
                return
    workers = [threading.Thread(target=run_lane, args=(k,)) for k in range(len(lanes))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return [r for lane in results for r in lane]


def epochs_since(history, start):
    """The epochs of a training log that an invocation started after `start` (a time.time()) ran: a resumed
    run's log also holds the epochs of earlier ones, whose time was spent then."""
    since = datetime.datetime.fromtimestamp(start).replace(microsecond=0)
    first = [i for i, h in enumerate(history) if "run" in h and datetime.datetime.fromisoformat(h["run"]["date"]) >= since]
    return history[first[0]:] if first else []


def stages_since(record, start):
    """{stage: seconds} of stage_times.json when the phase that started at `start` wrote it, else None (a
    phase that times no stages leaves the last one's file)."""
    if not record or datetime.datetime.fromisoformat(record["run"]["date"]) < \
            datetime.datetime.fromtimestamp(start).replace(microsecond=0):
        return None
    return record["seconds"]


def phase_line(p):
    """A phase's minutes, then its timed stages and the rest (start-up: imports, checkpoints read; the
    unnamed steps), largest first."""
    line = f"  {p['phase']:22s} {p['seconds'] / 60:5.1f} min"
    if "stages" in p:
        parts = sorted(p["stages"].items(), key=lambda kv: -kv[1])
        rest = p["seconds"] - sum(s for _, s in parts)
        named = [(f"{p['epochs']} epochs" if name == "epochs" and "epochs" in p else name, s) for name, s in parts]
        line += "  (" + ", ".join([f"{name} {s:.0f}s" for name, s in named if s >= 1] + [f"the rest {rest:.0f}s"]) + ")"
    if "beside" in p:
        line += f"  [beside {', '.join(p['beside'])}; {p['threads']} thread(s)]"
    return line


def load(cfg, name, suffix=""):
    path = cfg.artifact(name, suffix)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f) if path.endswith(".json") else [json.loads(line) for line in f if line.strip()]


def slice_has_tumor(path):
    """Whether a slice of the HR/MASK layout has a tumor, from the mask the data reader pairs with it (None:
    no mask)."""
    from layouts import mask_of
    from imaging import read_slice
    mask = mask_of(path)
    return None if mask is None else bool(read_slice(mask).any())


def headline(cfg, predicted, truth=None):
    """The figures a reader looks for first, from the artifacts the phases wrote."""
    out = {}
    ev = load(cfg, "eval_metrics")
    if ev:
        out["masked_psnr_db"] = ev["miram"]["fine"]["masked"]["psnr"]
        out["margin_over_best_classical_db"] = ev["margin_db"]["masked_psnr"]
        out["best_classical"] = ev["margin_db"]["vs"]
        out.update(other_fills(ev))
    inpaint = load(cfg, "inpaint_log")
    if inpaint:
        best = min(inpaint, key=lambda h: h["val_loss"])
        out["inpaint_hole_mse"], out["biharmonic_hole_mse"] = best["val_loss"], best["val_loss_biharmonic"]
    clf = load(cfg, "classification_metrics")
    if clf:
        out["auroc"] = clf["auroc"]
        out["heatmaps"] = {k: {"pointing_game": v["pointing_game"], "median_mass_ratio": v["mass_inside_over_share_median"]}
                           for k, v in clf["localization"].items() if v}
    inpaint_metrics = load(cfg, "inpaint_metrics") or {}
    if "validation" in inpaint_metrics:
        out["inpaint_gain_db"] = inpaint_metrics["validation"]["gain_db"]
    transfer = {}  # the same figures on the transfer set (TRANSFER_PATH), where the phases reported one
    if ev and "transfer" in ev:
        transfer.update(masked_psnr_db=ev["transfer"]["miram"]["fine"]["masked"]["psnr"],
                        margin_over_best_classical_db=ev["transfer"]["margin_db"]["masked_psnr"],
                        best_classical=ev["transfer"]["margin_db"]["vs"], **other_fills(ev["transfer"]))
    if "transfer" in inpaint_metrics:
        transfer["inpaint_gain_db"] = inpaint_metrics["transfer"]["gain_db"]
    if clf and "transfer" in clf:
        loc = clf["transfer"]["localization"].get(clf["default_heatmap"]) or {}
        transfer.update(auroc=clf["transfer"]["auroc"], pointing_game=loc.get("pointing_game"))
    if transfer:
        out["transfer"] = transfer
    if predicted is not None:
        out["demo_slice_probability"] = predicted
        if truth is not None:  # the slice's own label, so the summary says whether the prediction was right
            out["demo_slice_has_tumor"], out["demo_slice_threshold"] = truth, cfg.CLS_THRESHOLD
            chosen = (clf or {}).get("operating_point", {}).get("threshold")
            if chosen is not None and chosen == chosen:  # the validation split's operating threshold
                out["demo_slice_validation_threshold"] = chosen
    dep = load(cfg, "deploy_benchmark")
    if dep:
        spec = [r for r in dep["results"] if r["model"] == "classifier" and r["size"] == "spec" and r["batch"] == 1]
        if spec:
            fastest = min(spec, key=lambda r: r["p50_ms"])
            out["spec_classifier_batch1"] = {"backend": fastest["backend"], "p50_ms": fastest["p50_ms"]}
        out["parity_max_abs"] = max(v["max_abs"] for g in dep["parity"].values() for v in g.values() if isinstance(v, dict))
    return out


def other_fills(ev):
    """{"margin_db_<fill>": dB} of MIRAM's other fills evaluate.py measured on a set (adapted to each image,
    blended in seamlessly), under the keys of its results."""
    return {key: value["masked_psnr"] for key, value in ev.items()
            if key.startswith("margin_db_") and value["masked_psnr"] is not None}


def other_margins(figures):
    """The margins of the other fills, where evaluate.py measured them (ADAPT_STEPS, SEAMLESS_FILL)."""
    others = [(key[len("margin_db_"):].replace("_", " "), value) for key, value in figures.items()
              if key.startswith("margin_db_")]
    return " (" + ", ".join(f"{name} {value:+.2f}" for name, value in others) + " dB)" if others else ""


def screen(summary):
    lines = [f"MIRAM demo on {summary['run']['cpu']}: {summary['total_minutes']:.1f} min"]
    lines += [phase_line(p) for p in summary["phases"]]
    h = summary["headline"]
    if "masked_psnr_db" in h:
        lines.append(f"  reconstruction: masked-patch PSNR {h['masked_psnr_db']:.2f} dB, "
                     f"{h['margin_over_best_classical_db']:+.2f} dB over {h['best_classical']}{other_margins(h)}")
    if "inpaint_hole_mse" in h:
        lines.append(f"  inpainting: hole MSE {h['inpaint_hole_mse']:.5f} vs biharmonic {h['biharmonic_hole_mse']:.5f}"
                     + (f" ({h['inpaint_gain_db']:+.2f} dB)" if "inpaint_gain_db" in h else ""))
    if "auroc" in h:
        lines.append(f"  classification: AUROC {h['auroc']:.3f}; heatmaps (pointing game, median mass ratio): " + ", ".join(
            f"{k} {v['pointing_game']:.2f} / {v['median_mass_ratio']:.1f}x" for k, v in h["heatmaps"].items()))
    t = h.get("transfer", {})
    if t:
        parts = []
        if "margin_over_best_classical_db" in t:
            parts.append(f"masked-patch PSNR {t['masked_psnr_db']:.2f} dB, {t['margin_over_best_classical_db']:+.2f} dB "
                         f"over {t['best_classical']}{other_margins(t)}")
        if "inpaint_gain_db" in t:
            parts.append(f"inpainting {t['inpaint_gain_db']:+.2f} dB over biharmonic")
        if "auroc" in t:
            parts.append(f"AUROC {t['auroc']:.3f} without training on it" + (
                f", pointing game {t['pointing_game']:.2f}" if t.get("pointing_game") is not None else ""))
        lines.append("  transfer set (real heads never trained on): " + "; ".join(parts))
    if "demo_slice_probability" in h:
        verdict = ""
        if "demo_slice_has_tumor" in h:
            def call(threshold, name):
                right = (h["demo_slice_probability"] >= threshold) == h["demo_slice_has_tumor"]
                return f"{'right' if right else 'wrong'} at {name} {threshold:.3g}"
            calls = [call(h["demo_slice_threshold"], "the threshold")]
            if "demo_slice_validation_threshold" in h:
                calls.append(call(h["demo_slice_validation_threshold"], "the validation split's"))
            verdict = (f" ({'a tumor' if h['demo_slice_has_tumor'] else 'no tumor'} in its mask: "
                       + ", ".join(calls) + ")")
        lines.append(f"  demo slice: p(tumor) = {h['demo_slice_probability']:.3f}{verdict}")
    if "spec_classifier_batch1" in h:
        s = h["spec_classifier_batch1"]
        lines.append(f"  deployment: spec classifier {s['p50_ms']:.1f} ms at batch 1 ({s['backend']}); "
                     f"parity max-abs {h['parity_max_abs']:.1e}")
    return "\n".join(lines)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    env = dict(os.environ)
    if not args.preset and "MIRAM_PRESET" not in env:
        env["MIRAM_PRESET"] = "demo"
    cfg = load_config(args, environ=env)
    env.update(settings_env(args))  # each phase reads the settings it needs
    done, predicted, start = [], None, time.time()

    def read_probability(line):  # the prediction's probability, from its output
        nonlocal predicted
        found = re.search(r"p\(tumor\) = ([0-9.]+)", line)
        if found:
            predicted = float(found.group(1))
    with output_lock(cfg.OUTPUT_PATH):  # the demo's phases write here side by side; no other run may
        for lanes in phases(args, cfg):
            ran = run_step(lanes, env, read_probability)
            for name, cmd, stages, code, seconds, t0 in ran:
                done.append({"phase": name, "command": "python " + " ".join(cmd), "seconds": seconds})
                if len(lanes) > 1:
                    done[-1]["threads"] = lane_threads(lanes)
                    done[-1]["beside"] = [n for lane in lanes if name not in [p[0] for p in lane] for n, *_ in lane]
                if name in TRAINING_LOGS and not code:
                    epochs = epochs_since(load(cfg, TRAINING_LOGS[name]) or [], t0)
                    done[-1].update(epochs=len(epochs), epoch_seconds=round(sum(h["seconds"] for h in epochs), 1))
                timed = stages_since(load(cfg, "stage_times", "_" + stages) if stages else None, t0)
                if timed and not code:
                    done[-1]["stages"] = timed
                if code:
                    print(f"demo stopped: {name} failed (exit {code})", file=sys.stderr)
                    return code
    summary = {"phases": done, "total_minutes": round((time.time() - start) / 60, 2),
               "headline": headline(cfg, predicted, slice_has_tumor(os.path.join(ROOT, args.slice))),
               "run": run_info()}
    path = cfg.artifact("demo_summary")
    save_json(path, summary)
    print("\n" + screen(summary) + f"\n  (also in {path}; every figure with its command: make results -> docs/RESULTS.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

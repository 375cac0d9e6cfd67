"""Inpainting quality of `enhance.py --mode inpaint` against classical fills, on held-out slices.

    python bench/inpaint_quality.py [--checkpoint outputs/best_miram_mae.pth] [--max-images 50] [--seed 0]
    python bench/inpaint_quality.py --native --json outputs/inpaint_quality_native.json

--native damages and fills the slices at their own size, as `enhance.py` meets a scan (the demo's are
233 x 197), each region's size scaled from the model's IMG_SIZE to the slice's; without it the slices
are at IMG_SIZE, as the fine-tune's are.

Also the MAE's reconstruction of each whole slice (enhance.py's default mode), PSNR inside the head.

Synthetic damage on the validation split (subjects the model never trained on), and on every slice of the
transfer set where TRANSFER_PATH names one (JSON: "validation", "transfer"): blocks, stripes and
irregular blobs, each small/medium/large, placed on the brain. Every method fills exactly the same region
of the same [0, 1]-normalised slice; PSNR and SSIM are measured inside the region only (SSIM: windows
centred in it); PSNR is pooled over the images (from their mean squared error), so one exact fill of a
flat region cannot make a mean infinite. Methods: MIRAM as `enhance.py --mode inpaint` runs it (the
fine-tuned inpainting model, best_miram_inpaint.pth, when it exists), MIRAM with the pre-trained MAE's own
prediction (`--mae-fill`: no fine-tune), scikit-image biharmonic inpainting on the whole slice, and linear
interpolation from the known pixels (scipy griddata). The regions are drawn like the fine-tune's
(dataset.synthetic_damage), on other subjects, with another seed.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import build_from_checkpoint  # noqa: E402
from config import load_config  # noqa: E402
from dataset import load_split, load_transfer, native_slices, resolve_data_path  # noqa: E402
from imaging import normalize_intensity  # noqa: E402
from losses import psnr_from_mse, ssim  # noqa: E402
from models import torch_corrector, torch_predictor  # noqa: E402
from records import run_info, save_json  # noqa: E402
from restoration import DAMAGE_SIZES, Restorer, classical_fill, synthetic_damage  # noqa: E402

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="the MAE; default OUTPUT_PATH/best_miram_mae.pth")
    p.add_argument("--inpaint-checkpoint", default=None, help="default OUTPUT_PATH/best_miram_inpaint.pth")
    p.add_argument("--max-images", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--native", action="store_true", help="the slices at their own size, not IMG_SIZE")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cfg = load_config()
    torch.set_num_threads(2)
    mae_path = args.checkpoint or cfg.artifact("mae")
    model, mae_state = build_from_checkpoint(mae_path, "mae")
    trained_on = [(mae_path, mae_state)]  # scored on subjects neither model learned from
    model.eval()
    mc = model.cfg
    predict = torch_predictor(model, torch.device("cpu"))
    fill_path = args.inpaint_checkpoint or cfg.artifact("inpaint")
    restorers = {}  # the first is compared with the classical fills in the printed lines
    if os.path.isfile(fill_path):
        inpainter, fill_state = build_from_checkpoint(fill_path, "inpaint")
        trained_on.append((fill_path, fill_state))
        restorers["miram"] = Restorer(predict, mc.img_size, mc.patch_size, mc.mask_ratio,
                                      correct=torch_corrector(inpainter.eval(), torch.device("cpu")))
    else:
        print(f"no {fill_path} (train.py --inpaint): MIRAM with the MAE's own prediction only")
    restorers["miram_mae"] = Restorer(predict, mc.img_size, mc.patch_size, mc.mask_ratio)
    cfg = cfg.adopt(mc)
    _, val = load_split(cfg, quiet=True, trained_on=trained_on)
    sets = {"validation": val}
    transfer, root = load_transfer(cfg, mc.img_size, quiet=True, trained_on=trained_on)
    if transfer is not None:
        sets["transfer"] = transfer
    roots = {"validation": resolve_data_path(cfg, quiet=True), "transfer": root}
    report = {"run": run_info(), "native": args.native}
    for name, data in sets.items():
        if args.native:
            images = [normalize_intensity(img)[0].astype(np.float64)  # [0, 1] as training scales, not resized
                      for img, _ in native_slices(roots[name], data.names[:args.max_images], cfg)]
        else:
            images = data.images[:args.max_images, 0].double().numpy()
        print(f"{name}: {len(images)} slices" + (f" of {root}" if name == "transfer" else "")
              + (" at their own size" if args.native else ""))
        report[name] = score_set(images, restorers, np.random.default_rng(args.seed),
                                 mc.img_size if args.native else None)
        report[name]["reconstruct_psnr"] = reconstruct_psnr(images, restorers["miram_mae"])
        print("reconstruct mode (enhance.py's default), PSNR inside the head: "
              f"{report[name]['reconstruct_psnr']:.2f} dB")
    if args.json:
        save_json(args.json, report)


def reconstruct_psnr(images, restorer):
    """PSNR of the MAE's reconstruction of each whole slice (enhance.py's default mode) against the slice,
    inside the head (pixels over 0.1), pooled over the images."""
    mse = []
    for img in images:
        head = img > 0.1
        mse.append(np.mean((np.clip(restorer.reconstruct(img)[0], 0, 1)[head] - img[head]) ** 2))
    return psnr_from_mse(np.mean(mse))


def score_set(images, restorers, rng, model_size=None):
    """Every method on the same synthetic damage of images, per damage kind and size; model_size: the
    images are at their own size, each region's size scaled by the slice's side over model_size."""
    methods = (*restorers, "biharmonic", "linear")
    scores = {}
    for kind, sizes in DAMAGE_SIZES.items():
        for size_name, size in sizes.items():
            acc = {m: {"mse": [], "ssim": []} for m in methods}
            for img in images:
                brain = img > 0.1
                scaled = size if model_size is None else max(1, round(size * max(img.shape) / model_size))
                hole = synthetic_damage(kind, scaled, brain, rng)
                filled = {m: r.inpaint(img, hole) for m, r in restorers.items()}
                filled["biharmonic"] = classical_fill(img, hole, "biharmonic")
                filled["linear"] = classical_fill(img, hole, "linear")
                t = torch.from_numpy(img)[None, None]
                w = torch.from_numpy(hole.astype(np.float64))[None, None]
                for m, f in filled.items():
                    f = torch.from_numpy(np.clip(f, 0, 1))[None, None]
                    acc[m]["mse"].append(float(((f - t) ** 2 * w).sum() / w.sum()))
                    acc[m]["ssim"].append(ssim(f, t, weight=w).item())
            scores[f"{kind}/{size_name}"] = {m: {"psnr": psnr_from_mse(np.mean(r["mse"])),
                                                 "ssim": float(np.mean(r["ssim"]))} for m, r in acc.items()}
            row = scores[f"{kind}/{size_name}"]
            best = max(("biharmonic", "linear"), key=lambda m: row[m]["psnr"])
            print(f"{kind:6s} {size_name:6s} ({size:2d}px)  " + "  ".join(
                f"{m} {row[m]['psnr']:5.2f} dB / {row[m]['ssim']:.3f}" for m in methods)
                + f"   {methods[0]} - best classical: {row[methods[0]]['psnr'] - row[best]['psnr']:+.2f} dB", flush=True)
    overall = {m: float(np.mean([s[m]["psnr"] for s in scores.values()])) for m in methods}
    overall_ssim = {m: float(np.mean([s[m]["ssim"] for s in scores.values()])) for m in methods}
    print("mean over all damage kinds and sizes, PSNR / SSIM: "
          + ", ".join(f"{m} {overall[m]:.2f} dB / {overall_ssim[m]:.3f}" for m in methods))
    return {"n_images": len(images), "scores": scores, "mean_psnr": overall, "mean_ssim": overall_ssim}


if __name__ == "__main__":
    main()

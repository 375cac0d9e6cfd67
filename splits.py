"""The split: whole subjects (and near-identical images, as one subject) on one side, and the record a
checkpoint keeps of it so that later runs can check their validation was never trained on.

Public 2-D sets hold copies: one slice saved twice, re-encoded, resized, flipped. A split that ignores them puts
copies of validation images into training, and the validation figures measure memory. `duplicate_groups` finds
them by the correlation of 32 x 32 thumbnails (a left-right flip compared too); `merge_duplicates` makes each
group's subjects one, so the subject split keeps a group whole.
"""
import numpy as np

from imaging import DataError, fit_to_square, normalize_intensity

THUMBNAIL = 32  # pixels a side: copies agree at this scale whatever their size or encoding


def thumbnail(image):
    """A slice (H, W) in its own units -> (THUMBNAIL**2,) float32 of zero mean and unit norm (zeros if flat)."""
    t = fit_to_square(normalize_intensity(image)[0], THUMBNAIL).ravel().astype(np.float64)
    t -= t.mean()
    norm = np.linalg.norm(t)
    return (t / norm if norm > 0 else t).astype(np.float32)


def mirrored(thumbnails):
    """The thumbnails flipped left-right."""
    return thumbnails.reshape(-1, THUMBNAIL, THUMBNAIL)[:, :, ::-1].reshape(len(thumbnails), -1)


def components(n, pairs):
    """(n,) the smallest member of each item's connected component, items 0..n-1 linked by pairs (union-find)."""
    parent = np.arange(n)

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        a, b = root(a), root(b)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(n)])


def duplicate_groups(thumbnails, threshold, block=1024):
    """(N,) group ids: images whose thumbnails correlate at >= threshold, as they are or one flipped, are in one
    group (and so are the images linked through them). Compared in blocks of rows: memory N x block."""
    thumbnails = np.asarray(thumbnails, np.float32)
    flipped = mirrored(thumbnails)

    def pairs():
        for start in range(0, len(thumbnails), block):
            rows = thumbnails[start:start + block]
            corr = np.maximum(rows @ thumbnails.T, rows @ flipped.T)
            for i, j in zip(*np.nonzero(corr >= threshold)):
                yield start + i, j
    return components(len(thumbnails), pairs())


def merge_duplicates(subjects, groups):
    """-> (subjects with every group's subjects made one: the first of them by name, number of images that have a
    near-duplicate, number of groups of two or more)."""
    names = sorted(set(subjects))
    index = {s: i for i, s in enumerate(names)}
    first = {}
    for subject, group in zip(subjects, groups):
        first.setdefault(group, subject)
    roots = components(len(names), ((index[first[g]], index[s]) for s, g in zip(subjects, groups)))
    _, counts = np.unique(groups, return_counts=True)
    shared = counts >= 2
    return [names[roots[index[s]]] for s in subjects], int(counts[shared].sum()), int(shared.sum())


def split_by_subject(subjects, val_fraction: float, seed: int, val_subjects=()):
    """Indices (train, val): whole subjects go to one side. At least one subject on each side when possible.
    val_subjects: the validation subjects named (each must be one of subjects) instead of drawn."""
    unique = sorted(set(subjects))
    if val_subjects:
        unknown = sorted(set(val_subjects) - set(unique))
        if unknown:
            raise DataError(f"VAL_SUBJECTS names {unknown[0]!r}, not a subject of this data set "
                            f"({len(unique)} subjects, e.g. {unique[0]!r})")
        if set(val_subjects) >= set(unique):
            raise DataError("VAL_SUBJECTS names every subject of this data set: none would be left to train on")
    else:
        rng = np.random.default_rng(seed)
        order = [unique[i] for i in rng.permutation(len(unique))]
        n_val = min(max(1, round(len(unique) * val_fraction)), len(unique) - 1) if len(unique) > 1 else 0
        val_subjects = order[:n_val]
    val_subjects = set(val_subjects)
    train = [i for i, s in enumerate(subjects) if s not in val_subjects]
    val = [i for i, s in enumerate(subjects) if s in val_subjects]
    return train, val


def split_record(cfg, train_set, *parents):
    """Checkpoint fields naming every subject a model learned from: its own training split's and those of
    the checkpoints it started from (parents), so that later scripts can check validation is held out."""
    subjects = set(train_set.subjects)
    for parent in parents:
        subjects.update(parent.get("train_subjects", ()))
    return {"train_subjects": sorted(subjects),
            "split": {"SPLIT_SEED": cfg.SPLIT_SEED, "VAL_FRACTION": cfg.VAL_FRACTION,
                      "SUBJECT_PATTERN": cfg.SUBJECT_PATTERN, "DUPLICATE_CORRELATION": cfg.DUPLICATE_CORRELATION,
                      **({"VAL_SUBJECTS": cfg.VAL_SUBJECTS} if cfg.VAL_SUBJECTS else {})}}


def named_subjects(cfg):
    """VAL_SUBJECTS as a list (empty: the split is drawn)."""
    return [s.strip() for s in cfg.VAL_SUBJECTS.split(",") if s.strip()]


def recorded_split(state):
    """The split settings a checkpoint was trained under, for the messages below."""
    return ", ".join(f"{k}={v!r}" for k, v in state.get("split", {}).items()) or "not recorded"


def refuse_other_split(state, record, path):
    """A resumed run keeps the subjects its checkpoint trained on as training subjects: under another split
    they could be validating it now (record: this run's split_record)."""
    dropped = sorted(set(state.get("train_subjects", ())) - set(record["train_subjects"]))
    if dropped:
        raise DataError(f"{path}: cannot resume under this split: the checkpoint trained on {len(dropped)} "
                        f"subject(s) that this split does not train on (e.g. {dropped[0]}); use the checkpoint's "
                        f"split ({recorded_split(state)}) and data, or --no-resume to start over")


def refuse_trained_subjects(val_subjects, state, path):
    # Checkpoints from before the record was kept carry no "train_subjects": nothing to check against.
    leaked = sorted(set(val_subjects) & set(state.get("train_subjects", ())))
    if leaked:
        raise DataError(f"{path} was trained on {len(leaked)} of the {len(set(val_subjects))} validation subjects "
                        f"(e.g. {leaked[0]}), so its validation figures would be inflated: use the split it was "
                        f"trained with ({recorded_split(state)}) and the same data")



"""Restoration on numpy arrays: the classical fills MIRAM is compared with, the synthetic damage it learns
to repair, and the Restorer that runs a model (PyTorch or ONNX Runtime, through a callable) on a slice of
any size. No torch here: the deployed path uses it as it is.
"""
import concurrent.futures
import os

import numpy as np
from scipy import ndimage, sparse
from scipy.interpolate import griddata
from scipy.sparse.linalg import splu
from skimage.restoration import inpaint_biharmonic
from skimage.transform import resize

from config import MiramError, visible_count
from imaging import fit_to_square, normalize_intensity


# ---- classical fills ---------------------------------------------------------------------------------

def nearest_fill(img, hole):
    _, (iy, ix) = ndimage.distance_transform_edt(hole, return_indices=True)
    return img[iy, ix]


def linear_fill(img, hole):
    out = img.copy()
    vals = griddata(np.argwhere(~hole), img[~hole], np.argwhere(hole), method="linear")
    outside = np.isnan(vals)  # beyond the convex hull of known pixels: nearest
    if outside.any():
        vals[outside] = nearest_fill(img, hole)[hole][outside]
    out[hole] = vals
    return out


def whole_biharmonic_fill(img, hole):
    return inpaint_biharmonic(img, hole)


# The baselines of evaluate.py and bench/inpaint_quality.py: a new one is one entry here.
CLASSICAL_FILLS = {"nearest": nearest_fill, "linear": linear_fill, "biharmonic": whole_biharmonic_fill}


def classical_fill(img: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
    """Fills hole (bool, True = unknown) of a 2-D image from the known pixels only."""
    if method not in CLASSICAL_FILLS:
        raise ValueError(f"unknown fill method {method!r}")
    if not hole.any():
        return img.copy()
    if hole.all():
        raise MiramError("the region to fill covers the whole image: there is nothing to fill it from")
    return CLASSICAL_FILLS[method](img, hole)


def seamless_fill(fill: np.ndarray, image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """image with hole (bool) filled by fill's structure, made to meet the known pixels at the hole's edge:
    the discrete Poisson equation of seamless cloning (Perez, Gangnet & Blake, 2003). Inside the hole each
    pixel keeps fill's differences to its neighbours in the hole and takes the image's value from a known
    neighbour, solved in the least-squares sense; pixels outside the hole are the image's. fill (H, W), or
    (K, H, W) for K fills of one hole (one factorisation serves them all).

    A model's fill of hidden patches is right about what lies there but not exactly about the level it
    meets each visible patch at (a scan's contrast the model never saw): the solve moves each region of the
    fill by the smooth field that removes those steps. Only the known pixels next to the hole and fill
    inside it are read; fill outside the hole (a model's unsupervised guess at visible patches) never is."""
    fill, image = np.asarray(fill, np.float64), np.asarray(image, np.float64)
    fills = fill.reshape(-1, *hole.shape)  # (K, H, W)
    out = np.repeat(image[None], len(fills), axis=0)
    if hole.all():
        out = fills.copy()  # no edge to meet
    elif hole.any():
        H, W = hole.shape
        ys, xs = np.nonzero(hole)
        n = len(ys)
        index = np.full(hole.shape, -1)
        index[ys, xs] = np.arange(n)
        degree, rhs = np.zeros(n), np.zeros((n, len(fills)))
        rows, cols = [np.arange(n)], [np.arange(n)]
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            qy, qx = ys + dy, xs + dx
            pixel = np.nonzero((qy >= 0) & (qy < H) & (qx >= 0) & (qx < W))[0]  # hole pixels with this neighbour
            qy, qx = qy[pixel], qx[pixel]
            degree[pixel] += 1
            inside = hole[qy, qx]
            p, q = pixel[inside], index[qy[inside], qx[inside]]
            rows.append(p)
            cols.append(q)
            rhs[p] += (fills[:, ys[p], xs[p]] - fills[:, ys[q], xs[q]]).T
            rhs[pixel[~inside]] += image[qy[~inside], qx[~inside], None]
        values = np.concatenate([degree, -np.ones(sum(len(r) for r in rows[1:]))])
        system = sparse.csc_matrix((values, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
        # symmetric positive definite: an ordering for A + A^T, pivots on the diagonal
        solved = splu(system, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(rhs)
        out[:, ys, xs] = solved.T
    return out.reshape(fill.shape)


# ---- damaged regions and their classical fill (inpainting) -------------------------------------------

# The synthetic damage of the inpainting fine-tune and benchmark, per kind: nominal sizes in pixels.
DAMAGE_SIZES = {"block": {"small": 12, "medium": 24, "large": 48},   # side
                "stripe": {"small": 4, "medium": 8, "large": 16},    # height of a band across the brain
                "blob": {"small": 8, "medium": 16, "large": 28}}     # mean radius
# Inside a hole, the model's correction of the classical fill ramps from 0 at the edge to full weight
# this many pixels in: the fill is right at the known pixels, and the correction must not step there.
FILL_RAMP_PX = 6


def synthetic_damage(kind, size, brain, rng):
    """A damaged region (bool, brain's shape) of the given kind and size, centred on a brain pixel."""
    H, W = brain.shape
    inner = ndimage.binary_erosion(brain, iterations=8)
    ys, xs = np.nonzero(inner if inner.any() else brain)
    if len(ys) == 0:
        ys, xs = np.array([H // 2]), np.array([W // 2])
    k = rng.integers(len(ys))
    cy, cx = ys[k], xs[k]
    yy, xx = np.mgrid[:H, :W]
    if kind == "block":
        h = size // 2
        return (abs(yy - cy) <= h) & (abs(xx - cx) <= h)
    if kind == "stripe":
        cols = brain.any(axis=0) if brain.any() else np.ones(W, bool)
        return (abs(yy - cy) < size / 2) & cols[None, :]
    if kind != "blob":
        raise ValueError(f"unknown damage kind {kind!r}")
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + sum(rng.uniform(0, 0.25) * np.cos(j * theta + rng.uniform(0, 6.3)) for j in range(2, 5))
    return np.hypot(yy - cy, xx - cx) < size * wobble


def random_damage(brain, rng):
    """One region of a random kind, its size drawn around the kind's range (0.7x smallest to 1.3x largest)."""
    kind = list(DAMAGE_SIZES)[rng.integers(len(DAMAGE_SIZES))]
    sizes = DAMAGE_SIZES[kind].values()
    return synthetic_damage(kind, int(rng.uniform(0.7 * min(sizes), 1.3 * max(sizes))), brain, rng)


def lesion_shapes(masks, min_pixels=3):
    """Every connected lesion of masks (N, H, W) bool of at least min_pixels, each a bool (H, W) image of it
    where it was found: holes of real lesion shapes and sizes."""
    shapes = []
    for m in np.asarray(masks, bool):
        labelled, n = ndimage.label(m)
        shapes += [c for c in (labelled == k for k in range(1, n + 1)) if c.sum() >= min_pixels]
    return shapes


def place_shape(shape, brain, lesion, rng, margin=2, tries=20):
    """shape (bool (H, W)) placed inside brain (eroded by margin px) and clear of lesion (dilated by margin):
    where it was found when it fits there (in a common space such as MNI that is where such lesions occur),
    else at the first of `tries` random shifts of up to a quarter of the slice that fits. None: nowhere."""
    allowed = ndimage.binary_erosion(brain, iterations=margin)
    if lesion is not None and lesion.any():
        allowed &= ~ndimage.binary_dilation(lesion, iterations=margin)
    ys, xs = np.nonzero(shape)
    H, W = brain.shape
    for attempt in range(tries):
        dy, dx = (0, 0) if attempt == 0 else (rng.integers(-(H // 4), H // 4 + 1), rng.integers(-(W // 4), W // 4 + 1))
        y, x = ys + dy, xs + dx
        if y.min() >= 0 and x.min() >= 0 and y.max() < H and x.max() < W and allowed[y, x].all():
            hole = np.zeros((H, W), bool)
            hole[y, x] = True
            return hole
    return None


def white_matter_mean_fill(img, hole, lesion=None, ring=4):
    """The classical lesion-filling rule without a tissue segmentation: every hole pixel set to the mean of
    the normal-appearing tissue around it, the pixels of a ring `ring` px wide around the hole that are head
    (above 0.1 of the slice's range), outside any lesion, and within the ring's interquartile range (darker
    CSF and brighter grey matter or lesion left out: a lesion sits in white matter, so most of its ring is).
    Pixels outside the hole are returned unchanged."""
    img = np.asarray(img, np.float64)
    band = ndimage.binary_dilation(hole, iterations=ring) & ~hole
    band &= img > img.min() + 0.1 * (img.max() - img.min())
    if lesion is not None:
        band &= ~lesion
    values = img[band] if band.any() else img[~hole]
    low, high = np.percentile(values, [25, 75])
    middle = values[(values >= low) & (values <= high)]
    return np.where(hole, middle.mean() if len(middle) else values.mean(), img)


def biharmonic_fill(img, hole, margin=8):
    """img with hole (bool) filled by scikit-image's biharmonic inpainting, solved on the hole's bounding
    box plus a margin only (the same fill as on the whole image, far cheaper for a small hole); pixels
    outside the hole are returned unchanged."""
    img = np.asarray(img, np.float64)
    if not hole.any():
        return img.copy()
    if hole.all():
        raise MiramError("the region to fill covers the whole image: there is nothing to fill it from")
    ys, xs = np.nonzero(hole)
    y0, y1 = max(0, ys.min() - margin), min(hole.shape[0], ys.max() + margin + 1)
    x0, x1 = max(0, xs.min() - margin), min(hole.shape[1], xs.max() + margin + 1)
    out = img.copy()
    out[y0:y1, x0:x1] = inpaint_biharmonic(np.where(hole, 0.0, img)[y0:y1, x0:x1], hole[y0:y1, x0:x1])
    return np.where(hole, out, img)


def fill_weight(hole, ramp=FILL_RAMP_PX):
    """Per pixel, how much of the model's correction applies: 0 outside the hole, rising to 1 at ramp px
    from its edge."""
    return np.minimum(1.0, ndimage.distance_transform_edt(hole) / ramp)


def _fill_pair(pair):
    return biharmonic_fill(*pair)


def damaged_set(images, copies, seed, workers=None, shapes=None, lesions=None):
    """copies damaged regions on each slice of images (N, 1, S, S) in [0, 1], drawn from seed: float32
    arrays (N * copies, 1, S, S) of the biharmonic pre-fill, the fill weight and the original. The regions
    are synthetic (random_damage), or with shapes (lesion_shapes) real lesion shapes placed in tissue clear
    of the slice's own lesions (lesions (N, S, S) bool, or None), a synthetic one where none fits.
    The holes are drawn in order (the same set on any machine); the fills, independent sparse solves, run
    in `workers` processes (default: one per CPU core)."""
    rng = np.random.default_rng(seed)
    originals = [img for img in np.asarray(images, np.float64)[:, 0] for _ in range(copies)]
    if shapes:
        owned = [None if lesions is None else np.asarray(lesions[i], bool) for i in range(len(images)) for _ in range(copies)]
        holes = [place_shape(shapes[rng.integers(len(shapes))], img > 0.1, lesion, rng) for img, lesion in
                 zip(originals, owned)]
        holes = [random_damage(img > 0.1, rng) if h is None else h for img, h in zip(originals, holes)]
    else:
        holes = [random_damage(img > 0.1, rng) for img in originals]
    workers = min(workers or os.cpu_count() or 1, max(1, len(holes) // 64))
    if workers > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            prefilled = list(pool.map(_fill_pair, zip(originals, holes), chunksize=32))
    else:
        prefilled = [biharmonic_fill(img, hole) for img, hole in zip(originals, holes)]
    weights = [fill_weight(hole) for hole in holes]
    return tuple(np.stack(a)[:, None].astype(np.float32) for a in (prefilled, weights, originals))


# ---- the model on one slice of any size --------------------------------------------------------------

def phase_rank(grid):
    """A rank per patch: patches ordered by their 2x2 phase on the grid, then raster order. Windows of
    this order spread visible patches evenly (at MASK_RATIO 0.75 a window is exactly one phase)."""
    L = grid * grid
    rows, cols = np.divmod(np.arange(L), grid)
    order = np.lexsort((cols, rows, cols % 2, rows % 2))
    rank = np.empty(L, dtype=np.int64)
    rank[order] = np.arange(L)
    return rank


def window_noise(grid, len_keep, damaged=None):
    """(G, L) masking noise for deterministic passes at the trained mask ratio.

    Pass g keeps the g-th window of len_keep undamaged patches, so across the passes every undamaged patch
    is shown (and every patch is hidden in at least one pass when nothing is damaged). Damaged patches get
    the largest noise: never shown, unless fewer than len_keep patches are undamaged.
    """
    L = grid * grid
    damaged = np.zeros(L, bool) if damaged is None else np.asarray(damaged, bool)
    rank = phase_rank(grid)
    good = np.nonzero(~damaged)[0]
    good = good[np.argsort(rank[good])]
    bad = np.nonzero(damaged)[0]
    U = len(good)
    passes = max(1, int(np.ceil(U / len_keep)))
    noise = np.empty((passes, L), np.float32)
    for g in range(passes):
        noise[g, good] = (np.arange(U) - g * len_keep) % U
        noise[g, bad] = U + np.arange(len(bad))
    return noise


class Restorer:
    """Runs a MIRAM (torch or ONNX Runtime) on a [0, 1]-scaled slice of any size at the scale it learned
    at: every slice in training is padded to a centred square and resized to IMG_SIZE
    (imaging.fit_to_square), so the model sees the slice so, and its result is resized back onto the
    slice's own pixels. Tiles of IMG_SIZE pixels at the scan's own resolution would show it magnified parts
    of heads, unlike anything it learned from (docs/METHODS.md)."""

    def __init__(self, predict, img_size, patch_size, mask_ratio, batch=8, blend=True, correct=None, upscale=None):
        # predict: the MAE, (imgs (B,1,S,S) float32, noise (B,L) float32, ratio) -> fine, coarse (B,1,..);
        # None in a restorer that only inpaints with the fine-tuned model
        self.predict = predict
        self.correct = correct  # the inpainting model: (prefilled, weight (B,1,S,S) float32) -> restored
        self.upscale = upscale  # the super-resolution model: enlarged tiles (B,1,S,S) float32 -> restored
        self.size, self.p, self.ratio, self.batch, self.blend = img_size, patch_size, mask_ratio, batch, blend
        self.grid = img_size // patch_size

    def _down(self, img):
        return fit_to_square(np.asarray(img, np.float64), self.size).astype(np.float64)

    def _model_hole(self, hole):
        """Every model pixel a damaged pixel touches: at the model's scale nothing damaged counts as known."""
        return self._down(hole.astype(np.float64)) > 1e-3

    def _up(self, small, shape):
        """A model-scale (s, s) result -> the slice's (H, W) pixels (or half of them, for the coarse scale:
        shape is then the coarse slice's), undoing fit_to_square's centred padding."""
        H, W = shape
        side = max(H, W)
        square = small if small.shape[0] == side else resize(small, (side, side), order=1, mode="edge",
                                                              anti_aliasing=False)
        top, left = (side - H) // 2, (side - W) // 2
        return square[top:top + H, left:left + W]

    def _passes(self, img, noise):
        """The model on img (S, S) with every noise row: fine (G, S, S), coarse (G, S/2, S/2)."""
        imgs = np.repeat(img[None, None], len(noise), axis=0).astype(np.float32)
        fine, coarse = [], []
        for s in range(0, len(imgs), self.batch):
            f, c = self.predict(imgs[s:s + self.batch], noise[s:s + self.batch].astype(np.float32), self.ratio)
            fine.append(f[:, 0])
            coarse.append(c[:, 0])
        return np.concatenate(fine), np.concatenate(coarse)

    def reconstruct(self, img):
        """img (H, W) in [0, 1]-ish -> fine (H, W), coarse (ceil(H/2), ceil(W/2))."""
        H, W = img.shape
        len_keep = visible_count(self.grid ** 2, self.ratio)
        noise = window_noise(self.grid, len_keep)
        fine, coarse = self._passes(self._down(img), noise)
        hidden = (noise >= len_keep).astype(np.float64)  # (G, L): 1 where the pass predicted the patch

        def mean_of_hiding_passes(preds, p):
            g = self.grid
            weights = hidden.reshape(-1, g, 1, g, 1).repeat(p, 2).repeat(p, 4).reshape(-1, g * p, g * p)
            return (preds * weights).sum(0) / weights.sum(0)
        # the coarse slice's size follows the fine one's, as the model's two scales do
        half = ((H + 1) // 2, (W + 1) // 2)
        return (self._up(mean_of_hiding_passes(fine, self.p), (H, W)),
                self._up(mean_of_hiding_passes(coarse, self.p // 2), half))

    def inpaint(self, img, hole):
        """Fills hole (bool (H, W)) from all other pixels; pixels outside the hole are returned unchanged.

        Patches touching the hole at the model's scale are always hidden; the passes of window_noise show
        every other patch once, at the trained mask ratio, and the hole's prediction is the mean over the
        passes.
        """
        if not hole.any():
            return img.copy()
        if self.correct is not None:
            return self._corrected_fill(img, hole)
        small_hole = self._model_hole(hole)  # never shown to the model
        shown = np.where(small_hole, 0.0, self._down(np.where(hole, 0.0, img)))
        g, p = self.grid, self.p
        damaged = small_hole.reshape(g, p, g, p).any(axis=(1, 3)).reshape(-1)
        if damaged.all():
            raise MiramError("the damaged region covers the whole slice: nothing to inpaint from")
        fine, _ = self._passes(shown, window_noise(g, visible_count(g * g, self.ratio), damaged))
        pred = self._up(fine.mean(0), img.shape)  # mean over the passes
        if self.blend:
            pred = pred + boundary_correction(img - pred, hole)
        return np.where(hole, pred, img)

    def _corrected_fill(self, img, hole):
        """The hole's biharmonic fill at the slice's own pixels plus the inpainting model's correction,
        computed at the model's scale and resized back: the model returns its input outside the hole, so
        the correction is zero there and ramps in from the hole's edge."""
        prefilled = biharmonic_fill(img, hole)
        small = self._down(prefilled)
        weight = fill_weight(self._model_hole(hole))[None, None].astype(np.float32)
        out = self.correct(small[None, None].astype(np.float32), weight)
        correction = self._up(out[0, 0] - small, img.shape)
        return np.where(hole, prefilled + correction, img)


def boundary_correction(residual, hole):
    """The smooth field that makes a prediction meet the known pixels at the hole's edge.

    residual = image - prediction is known outside the hole; its biharmonic fill inside the hole, added to
    the prediction, removes the step at the boundary while keeping the structure the model predicted.
    """
    return np.where(hole, biharmonic_fill(residual, hole), 0.0)


# ---- one scan in its own units ------------------------------------------------------------------------

def scale_of(slice_values):
    _, (lo, hi) = normalize_intensity(slice_values.astype(np.float32))
    return lo, hi


def enhance_slices(restorer, slices, mode, holes=None):
    """slices (S, H, W) in a scan's own units -> (fine slices, coarse slices) in the same units; holes
    (S, H, W) bool for inpaint. Scaled like training's input (robust percentiles), but not clipped, so the
    mapping back is exact. (--mode superres: superres.enlarge_slices.)"""
    fine, coarse = [], []
    for i, s in enumerate(slices):
        lo, hi = scale_of(s)
        x = (s - lo) / (hi - lo)
        if mode == "inpaint":
            hole = holes[i]
            f = restorer.inpaint(x, hole)
            c = None
        else:
            f, c = restorer.reconstruct(x)
        out = f * (hi - lo) + lo
        if mode == "inpaint":
            out = np.where(hole, out, s)  # exactly the input's values outside the region
        fine.append(out)
        coarse.append(None if c is None else c * (hi - lo) + lo)
    return np.stack(fine), (None if coarse[0] is None else np.stack(coarse))

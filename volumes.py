"""How a volume is cut into 2-D slices, the same way in every phase whatever voxel order it was stored in."""
import numpy as np


def volume_slice(vol, index, axis):
    """vol's slice `index` along `axis`, as a view. np.take would first copy the whole volume whenever it is
    not C-ordered, as NIfTI data usually is."""
    return vol[(slice(None),) * axis + (index,)]


class VolumeView:
    """The slices every phase reads from a NIfTI volume, whatever voxel order the scanner stored: the volume
    turned to the closest RAS orientation (from its affine), cut along slice_axis (0 sagittal, 1 coronal,
    2 axial) and each slice turned so that superior (anterior, in an axial slice) is up and the subject's
    right is on the right, as the demo's slices of the MNI template are. Without it a volume stored LAS or
    sagittal-first reaches the models turned or mirrored against what they learned from. `stored` puts
    results back in the file's own voxel order. Every operation is a view: no copy of the volume."""

    def __init__(self, affine, slice_axis=2):
        from nibabel.orientations import io_orientation
        affine = np.asarray(affine, np.float64)
        # an affine without clear axis directions (singular, or NaN from a broken header): as stored
        ornt = io_orientation(affine) if np.isfinite(affine).all() else np.full((3, 2), np.nan)
        self.ornt = np.array([[0, 1], [1, 1], [2, 1]], float) if np.isnan(ornt).any() else ornt
        self.slice_axis = slice_axis

    def stored_axis(self, ras_axis):
        """The stored axis that runs along RAS axis ras_axis."""
        return int(np.flatnonzero(self.ornt[:, 0] == ras_axis)[0])

    @property
    def cut_axis(self):
        """The stored axis the slices are cut along."""
        return self.stored_axis(self.slice_axis)

    def count(self, stored_shape):
        return stored_shape[self.cut_axis]

    def in_plane(self, stored_values):
        """Per-axis values of the stored volume (voxel sizes) -> (rows, columns) of a slice."""
        ras = [stored_values[self.stored_axis(k)] for k in range(3) if k != self.slice_axis]
        return ras[1], ras[0]  # turned: the second RAS axis runs down the rows

    def _ras(self, vol):
        from nibabel.orientations import apply_orientation
        return apply_orientation(vol, self.ornt)

    def slice(self, vol, index):
        return np.rot90(volume_slice(self._ras(vol), index, self.slice_axis))

    def slices(self, vol):
        """(S, H, W)"""
        return np.rot90(np.moveaxis(self._ras(vol), self.slice_axis, 0), axes=(1, 2))

    def stored(self, slices):
        """(S, H, W) slices (of any in-plane size) -> the stored voxel order."""
        from nibabel.orientations import apply_orientation, axcodes2ornt, ornt_transform
        ras = np.moveaxis(np.rot90(np.asarray(slices), k=-1, axes=(1, 2)), 0, self.slice_axis)
        return apply_orientation(ras, ornt_transform(axcodes2ornt("RAS"), self.ornt))

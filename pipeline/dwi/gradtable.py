"""The canonical diffusion gradient table of the DWI stage.

:class:`DwiGradients` holds the b-values, the b-vectors *in the bvec-file
(FSL/BIDS) convention* and the voxel-to-world affine of the image they belong
to, so that every frame conversion is done in one place
(:mod:`pipeline.gradients` implements the conventions):

* ``bvecs`` -- as in the ``.bvec`` file: voxel-axis frame with x negated when
  ``det(affine[:3, :3]) > 0`` (the "radiological" FSL frame);
* :attr:`DwiGradients.voxel_directions` -- unit directions along the axes of the
  stored voxel array (x of ``bvecs`` flipped back for a positive determinant);
  this is the frame in which a tensor fitted to the array *as stored* lives, so
  :meth:`DwiGradients.dipy_gtab` uses it and eigenvectors map to world with
  :meth:`DwiGradients.voxel_to_world`;
* :attr:`DwiGradients.world_directions` -- unit RAS+ scanner-frame directions.

All checks of a gradient table (counts against the image, b = 0 present, unit
vectors, enough directions per shell, transposed files) live in
:func:`pipeline.validation.validate_dwi`; :meth:`DwiGradients.from_files` calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from pipeline.gradients import affine_rotation, fsl_to_world, group_shells, world_to_fsl

__all__ = ["DwiGradients"]

PathT = str | PathLike[str]


def _frozen(a: ArrayLike, dtype=float) -> np.ndarray:
    arr = np.array(a, dtype=dtype)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class DwiGradients:
    """Gradient table of one DWI series.

    Parameters
    ----------
    bvals : array-like (N,)
        b-values in s/mm².
    bvecs : array-like (N, 3)
        Gradient directions in the bvec-file (FSL) convention of ``affine``;
        zero for b = 0 volumes.
    affine : array-like (4, 4)
        Voxel-to-world matrix of the DWI image.
    b0_threshold : float
        Volumes with ``b <= b0_threshold`` are b = 0 volumes.
    shell_tolerance : float
        b-values within this of the first of a shell belong to that shell.
    warnings : tuple of str
        Notes from validation (e.g. a transposed ``.bvec`` file was repaired).
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    affine: np.ndarray
    b0_threshold: float = 50.0
    shell_tolerance: float = 100.0
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        bvals = _frozen(self.bvals).ravel()
        bvecs = _frozen(self.bvecs)
        affine = _frozen(self.affine)
        if bvecs.ndim != 2 or bvecs.shape != (bvals.size, 3):
            raise ValueError(
                f"bvecs must have shape (N, 3) with N = {bvals.size} b-values, got {bvecs.shape}"
            )
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise ValueError(f"affine must be a finite 4x4 matrix, got shape {affine.shape}")
        if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))):
            raise ValueError("bvals and bvecs must be finite")
        if np.any(bvals < 0):
            raise ValueError(f"b-values must be non-negative, got minimum {bvals.min():g}")
        if self.b0_threshold < 0 or self.shell_tolerance <= 0:
            raise ValueError(
                f"b0_threshold must be >= 0 and shell_tolerance > 0, got {self.b0_threshold} "
                f"and {self.shell_tolerance}"
            )
        object.__setattr__(self, "bvals", bvals)
        object.__setattr__(self, "bvecs", bvecs)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "warnings", tuple(self.warnings))

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_files(
        cls,
        dwi: PathT,
        bval: PathT,
        bvec: PathT,
        *,
        b0_threshold: float = 50.0,
        shell_tolerance: float = 100.0,
        bvec_norm_tolerance: float = 0.1,
        min_directions: int = 6,
    ) -> DwiGradients:
        """Read and validate a DWI series' gradient table.

        Runs :func:`pipeline.validation.validate_dwi` (raises
        :class:`~pipeline.errors.InputError` naming the offending file; a
        transposed ``.bvec`` is repaired with an ``InputWarning``) and takes
        the affine from the image header.
        """
        import nibabel as nib

        from pipeline.validation import validate_dwi

        check = validate_dwi(
            dwi,
            bval,
            bvec,
            b0_threshold=b0_threshold,
            shell_tolerance=shell_tolerance,
            bvec_norm_tolerance=bvec_norm_tolerance,
            min_directions=min_directions,
        )
        affine = np.asarray(nib.load(Path(dwi)).affine, dtype=float)
        return cls(
            bvals=check.bvals,
            bvecs=check.bvecs,
            affine=affine,
            b0_threshold=b0_threshold,
            shell_tolerance=shell_tolerance,
            warnings=check.warnings,
        )

    @classmethod
    def from_canonical(
        cls,
        dwi: PathT,
        bval: PathT,
        bvec: PathT,
        *,
        b0_threshold: float = 50.0,
        shell_tolerance: float = 100.0,
    ) -> DwiGradients:
        """Read a gradient table this package wrote (:meth:`write`) for a series it wrote.

        The table was validated when the raw series was loaded
        (:meth:`from_files`); this reads the two text files and the image header
        only (no voxel data), checking just that there is one entry per volume.
        """
        import nibabel as nib

        from pipeline.errors import InputError

        img = nib.load(Path(dwi))
        bvals = np.atleast_1d(np.loadtxt(bval, dtype=float))
        bvecs = np.atleast_2d(np.loadtxt(bvec, dtype=float))
        n = int(img.shape[3]) if len(img.shape) == 4 else 0
        if bvecs.shape == (3, bvals.size):
            bvecs = bvecs.T
        if bvals.size != n or bvecs.shape != (n, 3):
            raise InputError(Path(bval), f"canonical gradient table has {bvals.size} b-values "
                             f"and {bvecs.shape} vectors for the {n} volumes of {Path(dwi).name}")
        return cls(bvals, bvecs, np.asarray(img.affine, dtype=float), b0_threshold,
                   shell_tolerance)

    @classmethod
    def from_world(
        cls,
        bvals: ArrayLike,
        world_directions: ArrayLike,
        affine: ArrayLike,
        *,
        b0_threshold: float = 50.0,
        shell_tolerance: float = 100.0,
    ) -> DwiGradients:
        """Gradients from world (RAS+) directions, e.g. a scanner's or a phantom's."""
        bvecs = world_to_fsl(np.asarray(world_directions, dtype=float), np.asarray(affine))
        return cls(bvals, bvecs, affine, b0_threshold, shell_tolerance)

    # ------------------------------------------------------------ properties
    @property
    def n_volumes(self) -> int:
        return int(self.bvals.size)

    @property
    def b0_mask(self) -> np.ndarray:
        """Boolean (N,): b = 0 volumes (``b <= b0_threshold``)."""
        return self.bvals <= self.b0_threshold

    @property
    def dw_mask(self) -> np.ndarray:
        """Boolean (N,): diffusion-weighted volumes."""
        return ~self.b0_mask

    @property
    def shells(self) -> list[tuple[float, np.ndarray]]:
        """``(b-value, volume indices)`` per shell, b = 0 first (see :func:`group_shells`)."""
        return group_shells(
            self.bvals, b0_threshold=self.b0_threshold, tolerance=self.shell_tolerance
        )

    @property
    def shell_index(self) -> np.ndarray:
        """int (N,): index into :attr:`shells` of every volume."""
        out = np.empty(self.n_volumes, dtype=int)
        for i, (_, idx) in enumerate(self.shells):
            out[idx] = i
        return out

    @property
    def voxel_to_world_rotation(self) -> np.ndarray:
        """3x3 rotation (possibly improper) from the voxel-axis frame to world."""
        return affine_rotation(self.affine)

    @property
    def world_directions(self) -> np.ndarray:
        """Unit RAS+ world directions (N, 3); zero for b = 0 volumes."""
        out = fsl_to_world(self.bvecs, self.affine)
        out[self.b0_mask] = 0.0
        return out

    @property
    def voxel_directions(self) -> np.ndarray:
        """Unit directions (N, 3) along the stored voxel axes; zero for b = 0 volumes."""
        return self.world_to_voxel(self.world_directions)

    # ------------------------------------------------------------ frames
    def voxel_to_world(self, vectors: ArrayLike) -> np.ndarray:
        """Map vectors (..., 3) from the voxel-axis frame to world (e.g. tensor eigenvectors)."""
        v = np.asarray(vectors, dtype=float)
        return v @ self.voxel_to_world_rotation.T

    def world_to_voxel(self, vectors: ArrayLike) -> np.ndarray:
        """Map vectors (..., 3) from world to the voxel-axis frame."""
        v = np.asarray(vectors, dtype=float)
        return v @ self.voxel_to_world_rotation

    def dipy_gtab(self):
        """A DIPY ``GradientTable`` in the frame of the stored voxel array.

        Directions are :attr:`voxel_directions` (unit vectors; b-values are not
        rescaled by the norms of the file's vectors), so a model fitted to the
        array as stored returns eigenvectors in the voxel-axis frame; map them
        to world with :meth:`voxel_to_world`.
        """
        from dipy.core.gradients import gradient_table

        return gradient_table(
            np.asarray(self.bvals, dtype=float),
            bvecs=np.asarray(self.voxel_directions, dtype=float),
            b0_threshold=self.b0_threshold,
        )

    # ------------------------------------------------------------ derived tables
    def rotated(self, rotations: ArrayLike) -> DwiGradients:
        """Gradients after per-volume world-frame rotations.

        Parameters
        ----------
        rotations : array-like (N, 3, 3) or (3, 3)
            Proper rotation matrices acting on world column vectors: the new
            world direction of volume k is ``rotations[k] @ world_directions[k]``.
            After motion correction with a pull-back ``A_k`` (reference world ->
            volume k world) the caller passes ``A_k[:3, :3].T``
            (see :mod:`pipeline.dwi.motion`).
        """
        rot = np.asarray(rotations, dtype=float)
        if rot.shape == (3, 3):
            rot = np.broadcast_to(rot, (self.n_volumes, 3, 3))
        if rot.shape != (self.n_volumes, 3, 3):
            raise ValueError(
                f"rotations must have shape ({self.n_volumes}, 3, 3) or (3, 3), got {rot.shape}"
            )
        eye = np.broadcast_to(np.eye(3), rot.shape)
        if not np.allclose(rot @ np.swapaxes(rot, -1, -2), eye, atol=1e-6) or np.any(
            np.linalg.det(rot) < 0
        ):
            raise ValueError("rotations must be proper rotation matrices (orthogonal, det +1)")
        world = np.einsum("nij,nj->ni", rot, self.world_directions)
        bvecs = world_to_fsl(world, self.affine)
        bvecs[self.b0_mask] = self.bvecs[self.b0_mask]
        return DwiGradients(
            self.bvals, bvecs, self.affine, self.b0_threshold, self.shell_tolerance, self.warnings
        )

    def select(self, volumes: ArrayLike) -> DwiGradients:
        """The gradients of a subset of volumes (integer indices or a boolean mask (N,))."""
        idx = np.asarray(volumes)
        if idx.dtype == bool:
            if idx.shape != (self.n_volumes,):
                raise ValueError(
                    f"boolean volume mask must have shape ({self.n_volumes},), got {idx.shape}"
                )
            idx = np.flatnonzero(idx)
        idx = idx.astype(int).ravel()
        if idx.size and (idx.min() < -self.n_volumes or idx.max() >= self.n_volumes):
            raise ValueError(f"volume indices must lie in [0, {self.n_volumes}), got {idx}")
        return DwiGradients(
            self.bvals[idx],
            self.bvecs[idx],
            self.affine,
            self.b0_threshold,
            self.shell_tolerance,
            self.warnings,
        )

    def write(self, bval_path: PathT, bvec_path: PathT) -> tuple[Path, Path]:
        """Write FSL/BIDS ``.bval`` (one row) and ``.bvec`` (3 rows x N) files."""
        bval_path, bvec_path = Path(bval_path), Path(bvec_path)
        bval_path.write_text(" ".join(f"{b:g}" for b in self.bvals) + "\n")
        bvec_path.write_text(
            "\n".join(" ".join(f"{v:.6f}" for v in row) for row in self.bvecs.T) + "\n"
        )
        return bval_path, bvec_path

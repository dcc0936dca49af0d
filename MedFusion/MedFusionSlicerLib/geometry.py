"""Geometry: MRML IJK-to-RAS matrices <-> SimpleITK/LoadedImage (spacing, origin, direction) in LPS.

MRML stores a volume's geometry as an IJK-to-RAS matrix; SimpleITK and
:class:`MedFusionLib.io.LoadedImage` use LPS (x and y negated). Voxel arrays have the
same (k, j, i) = (z, y, x) order in both. The output volume of a fusion gets a copy of the
first input's IJK-to-RAS matrix (not a round trip), so its geometry is bit-identical.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import vtk

from MedFusionLib.errors import InputError

from .jobs import GEOMETRY_TOLERANCE, Geometry

_LPS_FLIP = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS: negate x and y


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 NumPy array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 NumPy array as a ``vtkMatrix4x4``."""
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras(node: Any) -> np.ndarray:
    """The IJK-to-RAS matrix of a volume node, as a 4x4 NumPy array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray | vtk.vtkMatrix4x4) -> Geometry:
    """SimpleITK-style LPS geometry ``(spacing, origin, direction)`` of an MRML IJK-to-RAS matrix.

    Column j of the upper 3x3 block is the RAS step of one voxel along index j: its length
    is the spacing and its direction the j-th axis; flipping x and y turns RAS into LPS.

    :param ijk_to_ras: 4x4 IJK-to-RAS matrix (NumPy or ``vtkMatrix4x4``).
    :returns: spacing (i, j, k), origin (LPS, mm) and the row-major 3x3 direction matrix.
    """
    m = matrix_to_array(ijk_to_ras) if isinstance(ijk_to_ras, vtk.vtkMatrix4x4) else np.asarray(ijk_to_ras, float)
    steps = _LPS_FLIP @ m[:3, :3]
    spacing = np.linalg.norm(steps, axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"IJK-to-RAS matrix has a zero-length axis (spacing {spacing.tolist()})")
    direction = steps / spacing
    origin = _LPS_FLIP @ m[:3, 3]
    return tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist())


def ijk_to_ras_from_geometry(
    spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """The 4x4 MRML IJK-to-RAS matrix of a SimpleITK-style LPS geometry (inverse of :func:`geometry_from_ijk_to_ras`).

    :param spacing: voxel size along i, j, k (mm).
    :param origin: LPS position of voxel (0, 0, 0) (mm).
    :param direction: row-major 3x3 direction cosines (LPS), flattened.
    """
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_FLIP @ np.asarray(direction, float).reshape(3, 3) @ np.diag(np.asarray(spacing, float))
    matrix[:3, 3] = _LPS_FLIP @ np.asarray(origin, float)
    return matrix


def check_same_grid(
    reference: np.ndarray, reference_matrix: np.ndarray, array: np.ndarray, matrix: np.ndarray,
    name: str, reference_name: str, remedy: str = "tick 'Resample onto input 1' (or register)",
) -> None:
    """Refuse, naming ``name`` and the remedy, a volume that is not on the reference volume's grid."""
    if array.shape != reference.shape:
        raise InputError(
            f"{name}: dimensions {tuple(reversed(array.shape))} differ from {reference_name}'s "
            f"{tuple(reversed(reference.shape))}; {remedy} to put it on that grid"
        )
    if not np.allclose(matrix, reference_matrix, rtol=0.0, atol=GEOMETRY_TOLERANCE):
        raise InputError(
            f"{name}: origin, spacing or orientation (IJK-to-RAS matrix) differ from {reference_name}'s; "
            f"{remedy} to put it on that grid"
        )

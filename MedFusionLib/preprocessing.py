"""Optional pre-processing before fusion: noise removal, registration,
intensity standardisation and colour (luminance / chroma) handling.

Every function here is optional, named, and never modifies its input: it
returns new arrays, or a new :class:`~MedFusionLib.io.LoadedImage` with the
same geometry when it was given one. All of them work on 2D images and 3D
volumes (numpy arrays in ``sitk.GetArrayFromImage`` order, ``(H, W)`` or
``(Z, Y, X)``). The actual filtering and registration are done by SimpleITK;
nothing here is a hand-written filter.

Output type rule (all functions returning floats): ``float32`` (and
``float16``) inputs give ``float32`` results, every other input type gives
``float64``, so large ``float32`` volumes are not doubled in memory while
integer data is never rounded.

Every problem with what the caller passed in raises
:class:`~MedFusionLib.errors.InputError`, whose message names the input and
lists the valid values where there is a fixed set of them.

Overview:

- :func:`denoise` -- curvature flow, Gaussian, median or bilateral smoothing.
- :func:`register`, :func:`resample_to` -- rigid/affine mutual-information
  registration of an image onto another one's grid, and plain resampling.
- :data:`CT_WINDOWS`, :func:`window_ct`, :func:`percentile_normalise`,
  :func:`standardise` -- intensities mapped onto ``[0, 1]`` per modality.
- :func:`rgb_to_ycbcr`, :func:`ycbcr_to_rgb`, :func:`split_luminance`,
  :func:`merge_luminance` -- fuse the luminance of a pseudo-colour PET/SPECT
  image and re-attach its colour afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import Cancelled, InputError
from .progress import CancelFlag
from .io import LoadedImage
from .io.images import _itk_message
from .validation import BT601_LUMA, check_int, luminance

__all__ = [
    "DENOISE_METHODS",
    "DENOISE_DEFAULTS",
    "denoise",
    "REGISTRATION_TRANSFORMS",
    "INTERPOLATORS",
    "RegistrationCancelled",
    "RegistrationProgress",
    "RegistrationResult",
    "register",
    "resample_to",
    "align_to_first",
    "CT_WINDOWS",
    "DEFAULT_CT_WINDOW",
    "MODALITIES",
    "window_ct",
    "percentile_normalise",
    "standardise",
    "Chroma",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "split_luminance",
    "merge_luminance",
]

ImageLike = Union[np.ndarray, LoadedImage]


# --------------------------------------------------------------------------- shared helpers


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """The output type rule of this module: float32 stays float32, the rest becomes float64."""
    if dtype in (np.dtype(np.float32), np.dtype(np.float16)):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def _check_numeric(array: np.ndarray, name: str) -> None:
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{name}: expected a numeric image array, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise InputError(f"{name}: complex-valued images are not supported")
    if array.size == 0:
        raise InputError(f"{name}: the image is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(f"{name}: contains NaN or infinite values")


def _grey_data(image: object, name: str) -> tuple[np.ndarray, Optional[LoadedImage]]:
    """Validate a grey 2D image or 3D volume; return its array (not copied) and the LoadedImage, if any.

    Colour images are refused: intensity operations are defined on one channel;
    :func:`split_luminance` gives the luminance of a colour image.
    """
    template: Optional[LoadedImage] = None
    if isinstance(image, LoadedImage):
        if image.is_color:
            raise InputError(
                f"{name}: colour images are not supported here; "
                "process the luminance from split_luminance() and merge_luminance() it back"
            )
        template = image
        array = np.asarray(image.array)
    else:
        array = np.asarray(image)
    _check_numeric(array, name)
    if array.ndim not in (2, 3):
        raise InputError(
            f"{name}: expected a 2D image or a 3D volume, got {array.ndim} dimensions (shape {array.shape})"
        )
    return array, template


def _rewrap(result: np.ndarray, template: Optional[LoadedImage]) -> ImageLike:
    """Return ``result`` as the caller passed the input: a bare array or a LoadedImage on the same grid."""
    if template is None:
        return result
    # path=None: the pixels no longer are the file's content.
    return LoadedImage(result, template.spacing, template.origin, template.direction, None, False)


def _choice(value: object, valid: Sequence[str], name: str) -> str:
    """Case-insensitive match of ``value`` against ``valid``; InputError listing them otherwise."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        for option in valid:
            if option.lower() == lowered:
                return option
    raise InputError(f"{name}: unknown value {value!r}; valid values are {', '.join(map(repr, valid))}")


def _positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InputError(f"{name}: expected a positive finite number, got {value!r}")
    if not math.isfinite(float(value)) or value <= 0:
        raise InputError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- noise removal

#: Names accepted by :func:`denoise`.
DENOISE_METHODS = ("curvature_flow", "gaussian", "median", "bilateral", "none")

#: Default parameters of each :func:`denoise` method; all lengths are in pixels (voxels).
#: ``time_step=None`` means 0.125 in 2D and 0.0625 in 3D (ITK's stable choices,
#: at most ``1 / 2**(dimension + 1)`` for unit spacing); ``range_sigma=None``
#: means 10 % of the image's intensity range (max - min).
DENOISE_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "curvature_flow": {"iterations": 5, "time_step": None},
    "gaussian": {"sigma": 1.0},
    "median": {"radius": 1},
    "bilateral": {"domain_sigma": 2.0, "range_sigma": None},
    "none": {},
}


def denoise(image: ImageLike, method: str = "curvature_flow", **params: Any) -> ImageLike:
    """Remove noise from a 2D image or 3D volume with a SimpleITK filter.

    Methods and their parameters (defaults in :data:`DENOISE_DEFAULTS`):

    - ``"curvature_flow"`` (``iterations=5``, ``time_step=0.125`` in 2D /
      ``0.0625`` in 3D): edge-preserving curvature-driven diffusion
      (``sitk.CurvatureFlow``), the classic choice before MR/CT segmentation.
    - ``"gaussian"`` (``sigma=1.0``): Gaussian blur (``sitk.DiscreteGaussian``).
    - ``"median"`` (``radius=1``, i.e. a 3x3 / 3x3x3 window): removes impulse
      noise, keeps edges (``sitk.Median``).
    - ``"bilateral"`` (``domain_sigma=2.0``, ``range_sigma`` = 10 % of the
      intensity range): edge-preserving smoothing (``sitk.Bilateral``).
    - ``"none"``: returns a float copy, so a pipeline can switch the step off.

    All lengths are in pixels (voxels), *not* millimetres: the filters run
    on a unit-spacing copy so a parameter means the same on every grid,
    whatever the spacing of a :class:`LoadedImage`.

    A 3D array whose last axis has 3 or 4 entries is refused, because it
    cannot be told apart from an RGB(A) image, which must not be smoothed
    across its channels: denoise the luminance of colour images
    (:func:`split_luminance`). A :class:`LoadedImage` volume is never ambiguous.

    :param image: 2D ``(H, W)`` image or 3D ``(Z, Y, X)`` volume, array or
        grey :class:`LoadedImage`; not modified.
    :param method: one of :data:`DENOISE_METHODS`.
    :param params: the method's parameters (see above); unknown names are refused.
    :returns: a new array (``float32`` for ``float32`` input, else ``float64``)
        of the same shape, or a new :class:`LoadedImage` with the same geometry.
    :raises InputError: unknown method or parameter, bad value, NaN/inf,
        wrong number of dimensions, colour or ambiguous input.
    """
    method = _choice(method, DENOISE_METHODS, "denoise method")
    array, template = _grey_data(image, "denoise image")
    if template is None and array.ndim == 3 and array.shape[-1] in (3, 4):
        raise InputError(
            f"denoise image: a 3D array of shape {array.shape} looks like an RGB(A) image; "
            "denoise its luminance (split_luminance), or pass a volume as a LoadedImage"
        )
    unknown = sorted(set(params) - set(DENOISE_DEFAULTS[method]))
    if unknown:
        valid = ", ".join(DENOISE_DEFAULTS[method]) or "none"
        raise InputError(
            f"denoise(method={method!r}): unknown parameter(s) {', '.join(unknown)}; valid: {valid}"
        )
    options = {**DENOISE_DEFAULTS[method], **params}
    dtype = _float_dtype(array.dtype)
    # ITK filters produce a new image: the caller's array is only read.
    source = array.astype(dtype, copy=True)
    if method == "none":
        return _rewrap(source, template)
    dim = source.ndim
    sitk_image = sitk.GetImageFromArray(source)  # unit spacing: parameters are in pixels
    label = f"denoise(method={method!r})"
    if method == "curvature_flow":
        iterations = check_int(options["iterations"], f"{label} iterations")
        time_step = options["time_step"]
        time_step = (0.125 if dim == 2 else 0.0625) if time_step is None else time_step
        time_step = _positive_float(time_step, f"{label} time_step")
        result = sitk.CurvatureFlow(sitk_image, timeStep=time_step, numberOfIterations=iterations)
    elif method == "gaussian":
        sigma = _positive_float(options["sigma"], f"{label} sigma")
        # The kernel must reach ~4 sigma on both sides, or ITK truncates it (and warns).
        width = max(32, 2 * int(math.ceil(4.0 * sigma)) + 1)
        result = sitk.DiscreteGaussian(
            sitk_image, variance=sigma * sigma, maximumKernelWidth=width, useImageSpacing=False
        )
    elif method == "median":
        radius = check_int(options["radius"], f"{label} radius")
        result = sitk.Median(sitk_image, [radius] * dim)
    else:  # bilateral
        domain_sigma = _positive_float(options["domain_sigma"], f"{label} domain_sigma")
        intensity_range = float(source.max()) - float(source.min())
        range_sigma = options["range_sigma"]
        if range_sigma is None:
            if intensity_range == 0.0:
                return _rewrap(source, template)  # a constant image has no noise to remove
            range_sigma = 0.1 * intensity_range
        range_sigma = _positive_float(range_sigma, f"{label} range_sigma")
        result = sitk.Bilateral(sitk_image, domainSigma=domain_sigma, rangeSigma=range_sigma)
    output = sitk.GetArrayFromImage(result).astype(dtype, copy=False)
    return _rewrap(output, template)


# --------------------------------------------------------------------------- registration

#: Transform models accepted by :func:`register`.
REGISTRATION_TRANSFORMS = ("rigid", "affine")

#: Interpolators accepted by :func:`resample_to`.
INTERPOLATORS: Mapping[str, int] = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}

#: Seed of the metric's random sampling: fixed, so a registration is repeatable.
REGISTRATION_SEED = 20240611


class RegistrationCancelled(Cancelled):
    """Raised by :func:`register` when its ``cancel`` flag was set; nothing is returned.

    :param message: what happened.
    :param iterations: optimizer iterations ITK ran in all, including the
        at most one per remaining resolution level that follow the stop.
    """

    def __init__(self, message: str, iterations: int = 0) -> None:
        super().__init__(message)
        self.iterations = iterations


@dataclass(frozen=True)
class RegistrationProgress:
    """What the ``progress`` callback of :func:`register` gets at every optimizer iteration.

    :param level: resolution level, 0 (coarsest) to ``levels - 1`` (full resolution).
    :param levels: number of resolution levels.
    :param iteration: iteration within the level, from 0.
    :param total_iterations: iterations done so far over all levels, this one included.
    :param metric_value: current metric (negative mutual information: lower is better).
    """

    level: int
    levels: int
    iteration: int
    total_iterations: int
    metric_value: float


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """The outcome of :func:`register`.

    :param resampled: the moving image resampled onto the fixed grid: a new
        :class:`LoadedImage` with exactly the fixed image's spacing, origin and
        direction (colour if the moving image was colour).
    :param transform: the optimised SimpleITK transform (``Euler2DTransform``,
        ``Euler3DTransform`` or ``AffineTransform``). Following ITK, it maps
        points of the *fixed* physical space onto the *moving* one; pass it to
        :func:`resample_to` to resample another image of the moving space.
    :param metric_value: final Mattes mutual-information metric (negative MI; lower is better).
    :param iterations: optimizer iterations over all resolution levels.
    :param converged: ``True`` when the last level stopped on its own
        criterion (step or gradient small enough), ``False`` when it ran out
        of iterations.
    :param stop_condition: the optimizer's own description of why it stopped.
    """

    resampled: LoadedImage
    transform: sitk.Transform
    metric_value: float
    iterations: int
    converged: bool
    stop_condition: str


def _check_loaded(image: object, name: str) -> LoadedImage:
    if not isinstance(image, LoadedImage):
        raise InputError(
            f"{name}: expected a LoadedImage (pixels plus geometry), got {type(image).__name__}; "
            "wrap arrays with LoadedImage.from_array"
        )
    if image.dimension not in (2, 3):
        raise InputError(f"{name}: expected a 2D image or 3D volume, got shape {np.shape(image.array)}")
    _check_numeric(np.asarray(image.array), name)
    return image


def _metric_image(image: LoadedImage, name: str) -> sitk.Image:
    """A float32 grey SimpleITK image for the metric; colour images count by their luminance."""
    array = luminance(image.array) if image.is_color else image.array
    grey = LoadedImage(
        np.asarray(array, dtype=np.float32), image.spacing, image.origin, image.direction, name, False
    )
    return grey.to_sitk()


def _resample(
    reference: LoadedImage,
    moving: LoadedImage,
    transform: sitk.Transform,
    interpolator: int,
    default_value: Optional[float],
    name: str,
) -> LoadedImage:
    """Resample ``moving`` onto ``reference``'s grid; the result carries ``reference``'s geometry verbatim."""
    source = moving.array
    if interpolator == sitk.sitkNearestNeighbor:
        dtype = np.asarray(source).dtype  # no new values are made, so the type is kept (label maps)
        if dtype == bool:
            source = np.asarray(source, dtype=np.uint8)
    else:
        # Interpolated values are not integers: resample in floats, never round them.
        dtype = _float_dtype(np.asarray(source).dtype)
        source = np.asarray(source, dtype=dtype)
    moving_sitk = LoadedImage(
        source, moving.spacing, moving.origin, moving.direction, name, moving.is_color
    ).to_sitk()
    reference_sitk = _metric_image(reference, "reference")  # only its grid is used
    if default_value is None:
        default_value = float(np.min(moving.array))
    try:
        result = sitk.Resample(moving_sitk, reference_sitk, transform, interpolator, float(default_value))
    except RuntimeError as exc:
        raise InputError(f"{name}: resampling failed: {_itk_message(exc)}") from None
    array = sitk.GetArrayFromImage(result).astype(dtype, copy=False)
    # Geometry copied from the reference itself, not read back from ITK, so it is exactly equal.
    return LoadedImage(array, reference.spacing, reference.origin, reference.direction, None, moving.is_color)


def resample_to(
    reference: LoadedImage,
    moving: LoadedImage,
    transform: Optional[sitk.Transform] = None,
    interpolator: str = "linear",
    default_value: Optional[float] = None,
) -> LoadedImage:
    """Put ``moving`` on ``reference``'s grid (shape, spacing, origin, direction).

    Resampling happens in physical space: with the default identity transform,
    a voxel of the result shows what ``moving`` holds at the same physical
    point (millimetres, both geometries honoured), so images that are already
    aligned in scanner space but sampled differently end up voxel to voxel.

    :param reference: the image whose grid the result takes; its pixels are unused.
    :param moving: the image to resample (grey or colour); not modified.
    :param transform: a SimpleITK transform mapping reference points to moving
        points (e.g. :attr:`RegistrationResult.transform`); default identity.
    :param interpolator: one of :data:`INTERPOLATORS`: ``"linear"`` (default),
        ``"nearest"`` (keeps the pixel type; for label maps), ``"bspline"``
        (cubic; can overshoot the input range).
    :param default_value: value of points outside ``moving``; default its minimum
        (the background of CT, MRI and PET alike).
    :returns: a new :class:`LoadedImage` with ``reference``'s geometry and
        float pixels (``float32`` for ``float32`` input, else ``float64``), or
        ``moving``'s pixel type for ``"nearest"``.
    :raises InputError: not LoadedImages, dimensions differ, bad transform or interpolator.
    """
    reference = _check_loaded(reference, "reference")
    moving = _check_loaded(moving, "moving")
    if reference.dimension != moving.dimension:
        raise InputError(
            f"moving: a {moving.dimension}D image cannot be resampled onto a {reference.dimension}D reference"
        )
    name = _choice(interpolator, tuple(INTERPOLATORS), "interpolator")
    if transform is None:
        transform = sitk.Transform(reference.dimension, sitk.sitkIdentity)
    elif not isinstance(transform, sitk.Transform):
        raise InputError(f"transform: expected a SimpleITK Transform, got {type(transform).__name__}")
    elif transform.GetDimension() != reference.dimension:
        raise InputError(
            f"transform: a {transform.GetDimension()}D transform does not fit {reference.dimension}D images"
        )
    if default_value is not None and (
        isinstance(default_value, bool)
        or not isinstance(default_value, Real)
        or not math.isfinite(default_value)
    ):
        raise InputError(f"default_value: expected a finite number, got {default_value!r}")
    return _resample(reference, moving, transform, INTERPOLATORS[name], default_value, "moving")


def _shrink_factors(shape: Sequence[int], factors: Sequence[int]) -> list[int]:
    """Cap each shrink factor so the coarse image keeps at least 8 pixels along its shortest axis."""
    shortest = min(shape)
    return [max(1, min(int(f), shortest // 8)) for f in factors]


def register(
    fixed: LoadedImage,
    moving: LoadedImage,
    transform: str = "rigid",
    *,
    max_iterations: int = 200,
    sampling_percentage: float = 0.15,
    histogram_bins: int = 50,
    seed: int = REGISTRATION_SEED,
    progress: Optional[Callable[[RegistrationProgress], None]] = None,
    cancel: Optional[CancelFlag] = None,
) -> RegistrationResult:
    """Register ``moving`` (image B) onto ``fixed`` (image A) and resample it onto A's grid.

    The recipe (SimpleITK ``ImageRegistrationMethod``), chosen to work for any
    pair of modalities:

    - metric: Mattes mutual information with ``histogram_bins`` (50) bins, so
      the intensities of the two images need not correspond (CT vs MRI, MRI vs
      PET); evaluated on a random ``sampling_percentage`` (15 %) of the fixed
      voxels with a fixed ``seed`` (the same samples every time); ITK's
      multi-threaded sums still round differently from run to run, which
      usually moves the result by far less than a voxel but can send the
      optimiser to another nearby end point (seen: 0.02 vs 0.60 px on a
      colour pair whose luminance is a non-linear remap of the other image);
    - initialisation: ``CenteredTransformInitializer`` in GEOMETRY mode (the
      centres of the two grids are aligned, rotation about the fixed centre),
      so images far apart in scanner coordinates still start overlapping;
    - transform: ``"rigid"`` (Euler2D/3D: rotation + translation) or
      ``"affine"`` (adds scaling and shear);
    - optimizer: regular-step gradient descent (initial step 1, minimum step
      1e-4, relaxation 0.5, at most ``max_iterations`` per level) with
      parameter scales from physical shift, so rotations and translations move
      voxels by comparable distances;
    - multi-resolution: shrink factors 4, 2, 1 with Gaussian smoothing sigmas
      2, 1, 0 voxels (capped so the coarsest image keeps 8 voxels per axis);
    - linear interpolation, and the resampled image's outside value is the
      minimum of the moving image.

    Colour images take part in the metric through their BT.601 luminance; a
    colour moving image is resampled in colour.

    Cancelling: when ``cancel.is_set()`` becomes true, the optimizer is
    stopped (``StopRegistration``) at the next iteration. ITK still starts
    every remaining resolution level, so up to one more iteration per level
    runs before :class:`RegistrationCancelled` is raised; no resampling is done.

    :param fixed: image A, the reference grid; not modified.
    :param moving: image B, moved onto A; not modified.
    :param transform: one of :data:`REGISTRATION_TRANSFORMS`.
    :param max_iterations: iteration limit of each resolution level.
    :param sampling_percentage: fraction (0, 1] of voxels used by the metric.
    :param histogram_bins: bins of the mutual-information joint histogram.
    :param seed: seed of the random sampling.
    :param progress: called with a :class:`RegistrationProgress` at every iteration
        (from the calling thread); an exception it raises stops the
        registration and is re-raised.
    :param cancel: a flag with ``is_set()`` (e.g. ``threading.Event``), polled every iteration.
    :returns: a :class:`RegistrationResult`.
    :raises InputError: bad inputs or parameters, images too small or
        constant, or a failure reported by ITK.
    :raises RegistrationCancelled: ``cancel`` was set.
    """
    fixed = _check_loaded(fixed, "fixed")
    moving = _check_loaded(moving, "moving")
    if fixed.dimension != moving.dimension:
        raise InputError(
            f"moving: a {moving.dimension}D image cannot be registered onto a {fixed.dimension}D fixed image"
        )
    dim = fixed.dimension
    for image, name in ((fixed, "fixed"), (moving, "moving")):
        if min(image.spatial_shape) < 4:
            raise InputError(
                f"{name}: registration needs at least 4 pixels along every axis, got {image.spatial_shape}"
                + ("; take a single slice as a 2D image" if dim == 3 else "")
            )
        # Mutual information of a constant image is undefined (ITK fails with a cryptic message).
        if np.ptp(np.asarray(image.array)) == 0:
            raise InputError(f"{name}: the image is constant, there is nothing to register")
    model = _choice(transform, REGISTRATION_TRANSFORMS, "transform")
    max_iterations = check_int(max_iterations, "max_iterations")
    histogram_bins = check_int(histogram_bins, "histogram_bins")
    sampling_percentage = _positive_float(sampling_percentage, "sampling_percentage")
    if sampling_percentage > 1.0:
        raise InputError(f"sampling_percentage: expected a fraction in (0, 1], got {sampling_percentage}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise InputError(f"seed: expected a non-negative integer, got {seed!r}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InputError("cancel: expected an object with is_set(), such as threading.Event")
    if progress is not None and not callable(progress):
        raise InputError("progress: expected a callable taking a RegistrationProgress")
    if cancel is not None and cancel.is_set():
        raise RegistrationCancelled("registration cancelled before it started")

    fixed_sitk = _metric_image(fixed, "fixed")
    moving_sitk = _metric_image(moving, "moving")
    if model == "rigid":
        initial: sitk.Transform = sitk.Euler2DTransform() if dim == 2 else sitk.Euler3DTransform()
    else:
        initial = sitk.AffineTransform(dim)
    try:
        initial = sitk.CenteredTransformInitializer(
            fixed_sitk, moving_sitk, initial, sitk.CenteredTransformInitializerFilter.GEOMETRY
        )
    except RuntimeError as exc:
        raise InputError(f"registration: cannot initialise the transform: {_itk_message(exc)}") from None

    shrink = _shrink_factors(
        [min(a, b) for a, b in zip(fixed.spatial_shape, moving.spatial_shape)], (4, 2, 1)
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(sampling_percentage, int(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0,
        minStep=1e-4,
        numberOfIterations=max_iterations,
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    # Voxel units, like the shrink factors they anti-alias.
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    # In place: ``initial`` keeps its concrete type (Euler/Affine) and ends up optimised.
    method.SetInitialTransform(initial, inPlace=True)

    # iterations: reported to the caller; events: every ITK iteration, also after a stop.
    state: dict[str, Any] = {"iterations": 0, "events": 0, "cancelled": False, "error": None}
    levels = len(shrink)

    def on_iteration() -> None:
        state["events"] += 1
        # ITK restarts the optimizer at every level, so a stop must be repeated there.
        if state["cancelled"] or state["error"] is not None:
            method.StopRegistration()
            return
        state["iterations"] += 1
        if progress is not None:
            try:
                progress(
                    RegistrationProgress(
                        level=int(method.GetCurrentLevel()),
                        levels=levels,
                        iteration=int(method.GetOptimizerIteration()),
                        total_iterations=state["iterations"],
                        metric_value=float(method.GetMetricValue()),
                    )
                )
            except Exception as exc:  # re-raised after Execute: ITK would only print it
                state["error"] = exc
        if state["error"] is not None or (cancel is not None and cancel.is_set()):
            state["cancelled"] = state["error"] is None
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        method.Execute(fixed_sitk, moving_sitk)
    except RuntimeError as exc:
        raise InputError(f"registration of moving onto fixed failed: {_itk_message(exc)}") from None
    if state["error"] is not None:
        raise state["error"]
    if state["cancelled"]:
        raise RegistrationCancelled(
            f"registration cancelled after {state['iterations']} iterations", iterations=state["events"]
        )
    stop_condition = method.GetOptimizerStopConditionDescription()
    resampled = _resample(fixed, moving, initial, sitk.sitkLinear, None, "moving")
    return RegistrationResult(
        resampled=resampled,
        transform=initial,
        metric_value=float(method.GetMetricValue()),
        iterations=int(state["iterations"]),
        converged="Maximum number of iterations" not in stop_condition,
        stop_condition=stop_condition,
    )


# --------------------------------------------------------------------------- intensity standardisation

#: CT display windows as ``(level, width)`` in Hounsfield units (standard radiology presets).
CT_WINDOWS: Mapping[str, Tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "bone": (600.0, 2800.0),
    "soft_tissue": (50.0, 400.0),
    "lung": (-600.0, 1500.0),
}

#: Window :func:`standardise` uses for CT. Brain: the fusion targets are head
#: scans, the brain window gives the grey/white matter contrast, and bone and
#: calcifications (> 80 HU) still come out saturated white, so the skull that
#: CT contributes to a CT+MRI fusion stays fully visible.
DEFAULT_CT_WINDOW = "brain"

#: Modalities understood by :func:`standardise`, with DICOM Modality codes as aliases.
MODALITIES: Mapping[str, str] = {
    "CT": "CT",
    "MRI": "MRI",
    "MR": "MRI",
    "PET": "PET",
    "PT": "PET",
    "SPECT": "SPECT",
    "NM": "SPECT",
}


def _off(value: Optional[str]) -> bool:
    """Whether an optional step is switched off: None and ``"none"`` mean the same everywhere."""
    return value is None or str(value).strip().lower() == "none"


def align_to_first(
    images: Sequence[LoadedImage],
    *,
    denoise_method: Optional[str] = None,
    register_transform: Optional[str] = None,
    resample: bool = False,
    tolerance: float = 1e-5,
    progress: Optional[Callable[[float, str], None]] = None,
    cancel: Optional[CancelFlag] = None,
) -> list[LoadedImage]:
    """The pre-processing every fusion entry point shares: denoise, then put inputs 2.. on input 1's grid.

    :param images: K >= 1 :class:`LoadedImage` (input 1 is the reference grid); not modified.
    :param denoise_method: a :data:`DENOISE_METHODS` name applied to every grey input, or None/``"none"``.
    :param register_transform: ``"rigid"`` or ``"affine"`` to register inputs 2.. onto input 1
        (:func:`register`), or None/``"none"``.
    :param resample: without registration, resample an input whose grid differs from input 1's
        onto it (:func:`resample_to`, physical space); inputs on input 1's grid are kept as they are.
    :param tolerance: how far geometries may differ and still count as one grid (see
        :meth:`LoadedImage.geometry_matches`).
    :param progress: ``progress(fraction, message)`` after each step.
    :param cancel: polled between steps and inside registration; raises :class:`RegistrationCancelled`.
    :returns: the K images, input 1 first.
    """
    images = list(images)
    steps = max(len(images) * (0 if _off(denoise_method) else 1) + len(images) - 1, 1)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done / steps, 1.0), message)

    def check_cancel(where: str) -> None:
        if cancel is not None and cancel.is_set():
            raise RegistrationCancelled(f"pre-processing cancelled ({where})")

    if not _off(denoise_method):
        for i, image in enumerate(images):
            check_cancel("denoising")
            if not image.is_color:
                images[i] = denoise(image, denoise_method)
            step(f"denoised input {i + 1}")
    reference = images[0]
    for i in range(1, len(images)):
        check_cancel("registration")
        if not _off(register_transform):
            images[i] = register(reference, images[i], transform=register_transform, cancel=cancel).resampled
        elif resample and not reference.geometry_matches(images[i], tol=tolerance):
            images[i] = resample_to(reference, images[i])
        step(f"input {i + 1} on input 1's grid")
    return images


def _window(window: object) -> tuple[float, float]:
    if isinstance(window, str):
        return CT_WINDOWS[_choice(window, tuple(CT_WINDOWS), "CT window preset")]
    try:
        level, width = window  # type: ignore[misc]
        level, width = float(level), float(width)
    except (TypeError, ValueError):
        raise InputError(
            f"CT window: expected a preset name ({', '.join(CT_WINDOWS)}) or a (level, width) pair, "
            f"got {window!r}"
        ) from None
    if not math.isfinite(level) or not math.isfinite(width) or width <= 0:
        raise InputError(f"CT window: level must be finite and width positive, got ({level}, {width})")
    return level, width


def window_ct(image: ImageLike, window: Union[str, Tuple[float, float]] = DEFAULT_CT_WINDOW) -> ImageLike:
    """Map CT intensities (Hounsfield units) through a display window onto ``[0, 1]``.

    ``level - width / 2`` maps to 0, ``level + width / 2`` to 1, linearly in
    between; values outside are clipped.

    :param image: CT image or volume in HU (array or grey :class:`LoadedImage`); not modified.
    :param window: a :data:`CT_WINDOWS` preset name, or a ``(level, width)`` pair in HU.
    :returns: a new float array in ``[0, 1]`` of the same shape (or a LoadedImage on the same grid).
    :raises InputError: unknown preset, bad window, NaN/inf, wrong dimensions.
    """
    array, template = _grey_data(image, "CT image")
    return _rewrap(_window_mapping(array, window)(array), template)


#: A standardisation whose statistics were taken once over a whole image or volume, applied to
#: any part of it (``part`` -> the part on [0, 1]): a volume is then standardised slice batch by
#: slice batch, with the same numbers as at once, without volume-sized temporaries.
UnitMapping = Callable[[np.ndarray], np.ndarray]


def _affine_mapping(lower: float, width: float, dtype: np.dtype) -> UnitMapping:
    """``clip((x - lower) / width, 0, 1)`` in float64, then ``dtype``."""
    def apply(part: np.ndarray) -> np.ndarray:
        return np.clip((part.astype(np.float64) - lower) / width, 0.0, 1.0).astype(dtype, copy=False)

    return apply


def _window_mapping(array: np.ndarray, window: object) -> UnitMapping:
    level, width = _window(window)
    return _affine_mapping(level - width / 2.0, width, _float_dtype(array.dtype))


def percentile_normalise(
    image: ImageLike,
    low: float = 1.0,
    high: float = 99.0,
    mask: Optional[Union[np.ndarray, LoadedImage]] = None,
) -> ImageLike:
    """Map the ``low``-th percentile to 0 and the ``high``-th to 1, clipping outside.

    Robust to the outliers of MRI, PET and SPECT, whose intensities have no
    absolute scale. Percentiles use numpy's linear interpolation.

    Degenerate rule: when the two percentiles are equal (a mostly-empty PET
    whose 1st and 99th percentiles are both background), the full range
    ``[min, max]`` is used instead; when that is empty too, the image is
    constant and the result is all zeros (no contrast to show).

    :param image: image or volume (array or grey :class:`LoadedImage`); not modified.
    :param low: lower percentile, in ``[0, 100)``.
    :param high: upper percentile, in ``(low, 100]``.
    :param mask: optional array of the image's shape; percentiles are taken
        over its non-zero voxels only (e.g. a head mask), but every voxel is mapped.
    :returns: a new float array in ``[0, 1]`` (or a LoadedImage on the same grid).
    :raises InputError: bad percentiles, bad or empty mask, NaN/inf, wrong dimensions.
    """
    array, template = _grey_data(image, "image to normalise")
    return _rewrap(_percentile_mapping(array, low, high, mask)(array), template)


def _percentile_mapping(array: np.ndarray, low: float, high: float, mask: object) -> UnitMapping:
    """:func:`percentile_normalise`'s percentiles of ``array``, as a mapping of any part of it."""
    for value, name in ((low, "low"), (high, "high")):
        if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 100.0:
            raise InputError(f"percentile {name}: expected a number in [0, 100], got {value!r}")
    if not float(low) < float(high):
        raise InputError(f"percentiles: low ({low}) must be below high ({high})")
    values = array
    if mask is not None:
        mask_array = np.asarray(mask.array if isinstance(mask, LoadedImage) else mask)
        if mask_array.shape != array.shape:
            raise InputError(f"mask: shape {mask_array.shape} differs from the image shape {array.shape}")
        _check_numeric(mask_array, "mask")
        selected = mask_array != 0
        if not np.any(selected):
            raise InputError("mask: selects no voxel")
        values = array[selected]
    # Always a copy of our own (np.array copies), so the percentile may reorder it in place instead
    # of copying it once more: same numbers, half the memory traffic on a volume.
    values = np.array(values, dtype=np.float64)
    lower, upper = np.percentile(values, [float(low), float(high)], overwrite_input=True)
    if upper <= lower:
        lower, upper = float(values.min()), float(values.max())
    dtype = _float_dtype(array.dtype)
    if upper <= lower:
        return lambda part: np.zeros(part.shape, dtype=dtype)
    return _affine_mapping(lower, upper - lower, dtype)


def standardise(
    image: ImageLike,
    modality: str,
    preset: Optional[Union[str, Tuple[float, float]]] = None,
    *,
    low: float = 1.0,
    high: float = 99.0,
    mask: Optional[Union[np.ndarray, LoadedImage]] = None,
) -> ImageLike:
    """Bring an image onto ``[0, 1]`` the way its modality calls for.

    - CT (HU are absolute): :func:`window_ct` with ``preset`` (default
      :data:`DEFAULT_CT_WINDOW`, ``"brain"``), or ``preset="percentile"`` for CT
      that is no longer in HU (e.g. an 8-bit PNG export).
    - MRI, PET, SPECT (arbitrary units): :func:`percentile_normalise` with
      ``low``, ``high`` and ``mask``.

    ``uint8``/``bool`` CT is refused unless ``preset="percentile"``: those types
    cannot hold HU (air is -1000), so the data was already windowed for display.

    :param image: image or volume (array or grey :class:`LoadedImage`); not modified.
    :param modality: one of :data:`MODALITIES` (case-insensitive; DICOM codes
        MR, PT, NM accepted).
    :param preset: CT only: a :data:`CT_WINDOWS` name, a ``(level, width)`` pair, or ``"percentile"``.
    :param low: lower percentile for percentile normalisation.
    :param high: upper percentile for percentile normalisation.
    :param mask: optional mask for percentile normalisation.
    :returns: a new float array in ``[0, 1]`` (or a LoadedImage on the same grid).
    :raises InputError: unknown modality or preset, preset given for a non-CT
        modality, 8-bit CT without ``preset="percentile"``, bad image.
    """
    array, template = _grey_data(image, _standardised_name(modality, preset))
    return _rewrap(_standardisation(array, modality, preset, low, high, mask)(array), template)


def standardisation(
    image: ImageLike,
    modality: str,
    preset: Optional[Union[str, Tuple[float, float]]] = None,
    *,
    low: float = 1.0,
    high: float = 99.0,
    mask: Optional[Union[np.ndarray, LoadedImage]] = None,
) -> UnitMapping:
    """:func:`standardise` in two steps: its statistics of ``image``, taken now, and the returned
    mapping, which brings the image's array or any part of it (a batch of slices of a volume) onto
    [0, 1] with the same numbers as :func:`standardise` gives for the whole.

    Parameters and errors as :func:`standardise`.
    """
    array, _ = _grey_data(image, _standardised_name(modality, preset))
    return _standardisation(array, modality, preset, low, high, mask)


def percentile_normalisation(image: ImageLike, low: float = 1.0, high: float = 99.0, mask: object = None) -> UnitMapping:
    """:func:`percentile_normalise` in two steps, as :func:`standardisation` is :func:`standardise`."""
    array, _ = _grey_data(image, "image to normalise")
    return _percentile_mapping(array, low, high, mask)


def _standardised_name(modality: object, preset: object) -> str:
    """How messages about the image :func:`standardise` gets name it (the modality is checked here)."""
    canonical = MODALITIES[_choice(modality, tuple(MODALITIES), "modality")]
    percentile = isinstance(preset, str) and preset.strip().lower() == "percentile"
    return "CT image" if canonical == "CT" and not percentile else "image to normalise"


def _standardisation(array: np.ndarray, modality: str, preset: object, low: float, high: float,
                     mask: object) -> UnitMapping:
    key = _choice(modality, tuple(MODALITIES), "modality")
    canonical = MODALITIES[key]
    if canonical != "CT":
        if preset is not None:
            raise InputError(
                f"preset: CT windows apply to CT only, not {canonical}; "
                f"{canonical} is percentile-normalised (use low/high/mask)"
            )
        return _percentile_mapping(array, low, high, mask)
    if isinstance(preset, str) and preset.strip().lower() == "percentile":
        return _percentile_mapping(array, low, high, mask)
    if isinstance(preset, str):
        _choice(preset, tuple(CT_WINDOWS) + ("percentile",), "CT preset")  # lists every valid name
    if array.dtype in (np.dtype(np.uint8), np.dtype(bool)):
        raise InputError(
            f"CT image: {array.dtype} data cannot hold Hounsfield units (air is -1000 HU), so it was "
            "already windowed for display; pass preset='percentile'"
        )
    return _window_mapping(array, DEFAULT_CT_WINDOW if preset is None else preset)


# --------------------------------------------------------------------------- colour
#
# skimage.color.rgb2ycbcr/ycbcr2rgb are not used: they implement the
# studio-swing variant (Y in 16..235, Cb/Cr in 16..240), whose Y is not the
# BT.601 luminance the rest of MedFusionLib scores and fuses. The full-range
# JPEG (JFIF) convention below has Y == validation.luminance exactly.

# Full-range BT.601 (JPEG/JFIF) forward matrix; rows give Y, Cb, Cr before the chroma offset.
_YCBCR_FROM_RGB = np.array(
    [
        BT601_LUMA,
        [-0.168735892, -0.331264108, 0.5],
        [0.5, -0.418687589, -0.081312411],
    ]
)
# The exact inverse rather than JPEG's rounded 1.402 / 0.344136 / 0.714136 / 1.772,
# which would break a round trip at the 1e-5 level on 0..255 data.
_RGB_FROM_YCBCR = np.linalg.inv(_YCBCR_FROM_RGB)


def _scale(value: object, name: str = "scale") -> float:
    return _positive_float(value, name)


def _colour_array(rgb: object, name: str, scale: float) -> np.ndarray:
    """Validate an ``(..., 3|4)`` colour array within ``[0, scale]``; return its RGB channels as float64."""
    array = np.asarray(rgb.array if isinstance(rgb, LoadedImage) else rgb)
    _check_numeric(array, name)
    if array.ndim < 3 or array.shape[-1] not in (3, 4):
        raise InputError(
            f"{name}: expected an (H, W, 3) RGB or (H, W, 4) RGBA array, got shape {array.shape}"
        )
    values = np.asarray(array[..., :3], dtype=np.float64)  # alpha dropped, as luminance() does
    lowest, highest = float(values.min()), float(values.max())
    tolerance = 1e-9 * scale
    if lowest < -tolerance or highest > scale + tolerance:
        raise InputError(
            f"{name}: values in [{lowest:g}, {highest:g}] exceed [0, {scale:g}]; "
            "pass the data's full-scale value as scale (255 for 0..255 data, 1 for 0..1)"
        )
    return values


def rgb_to_ycbcr(rgb: np.ndarray, scale: float = 255.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert RGB to full-range BT.601 (JPEG) Y, Cb, Cr, in the units of the input.

    ``Y = 0.299 R + 0.587 G + 0.114 B`` (identical to
    :func:`MedFusionLib.validation.luminance`), ``Cb = 0.564 (B - Y) + offset``,
    ``Cr = 0.713 (R - Y) + offset``, with ``offset = 128 * scale / 255``: 128
    for 8-bit data as in JPEG, 128/255 for ``[0, 1]`` data, so converting
    commutes with rescaling. Y lies in ``[0, scale]``; Cb and Cr in
    ``offset -/+ scale / 2`` (0.5 to 255.5 for 8-bit data: JPEG's 128 is not
    the exact middle; they are floats here, so nothing is clamped).

    :param rgb: ``(..., 3)`` RGB or ``(..., 4)`` RGBA array (alpha ignored),
        any numeric type, values in ``[0, scale]``; not modified.
    :param scale: the full-scale value of the data: 255 (default, also right
        for ``uint8``) or 1.0 for ``[0, 1]`` floats. Pass the same value to
        :func:`ycbcr_to_rgb` for an exact round trip.
    :returns: ``(y, cb, cr)``, new ``float64`` arrays of the image's shape without the channel axis.
    :raises InputError: wrong shape, NaN/inf, values outside ``[0, scale]``.
    """
    scale = _scale(scale)
    values = _colour_array(rgb, "RGB image", scale)
    offset = 128.0 * scale / 255.0
    y = luminance(values)  # the very function the rest of the library uses: Y matches bit for bit
    cb = values @ _YCBCR_FROM_RGB[1] + offset
    cr = values @ _YCBCR_FROM_RGB[2] + offset
    return y, cb, cr


def ycbcr_to_rgb(
    y: np.ndarray, cb: np.ndarray, cr: np.ndarray, scale: float = 255.0, clip: bool = True
) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`: full-range BT.601 Y, Cb, Cr back to RGB.

    :param y: luminance, in ``[0, scale]``.
    :param cb: blue-difference chroma with offset ``128 * scale / 255``.
    :param cr: red-difference chroma with the same offset.
    :param scale: the full-scale value used in :func:`rgb_to_ycbcr` (default 255).
    :param clip: clip the result to ``[0, scale]`` (default): a modified Y with
        the original chroma can fall outside the RGB gamut.
    :returns: a new ``(..., 3)`` ``float64`` RGB array.
    :raises InputError: shapes differ, NaN/inf, non-numeric input.
    """
    scale = _scale(scale)
    planes = []
    for plane, name in ((y, "Y"), (cb, "Cb"), (cr, "Cr")):
        array = np.asarray(plane)
        _check_numeric(array, name)
        planes.append(np.asarray(array, dtype=np.float64))
    if not planes[0].shape == planes[1].shape == planes[2].shape:
        raise InputError(
            f"Cb, Cr: shapes {planes[1].shape}, {planes[2].shape} differ from the Y shape {planes[0].shape}"
        )
    offset = 128.0 * scale / 255.0
    stacked = np.stack([planes[0], planes[1] - offset, planes[2] - offset], axis=-1)
    rgb = stacked @ _RGB_FROM_YCBCR.T
    if clip:
        np.clip(rgb, 0.0, scale, out=rgb)
    return rgb


@dataclass(frozen=True, eq=False)
class Chroma:
    """The colour of an image, kept aside while its luminance is fused.

    :param cb: blue-difference chroma, ``[0, 1]`` units (offset 128/255).
    :param cr: red-difference chroma, same units.
    """

    cb: np.ndarray
    cr: np.ndarray


def _default_colour_scale(array: np.ndarray) -> float:
    # Colour medical images (pseudo-colour PNG, DICOM secondary captures) are 8-bit when integer.
    return 255.0 if np.issubdtype(array.dtype, np.integer) or array.dtype == bool else 1.0


def split_luminance(
    image: ImageLike, scale: Optional[float] = None
) -> tuple[np.ndarray, Optional[Chroma]]:
    """Split an image into what is fused (Y) and the colour put back afterwards.

    - Colour (``(H, W, 3|4)`` array, or a colour :class:`LoadedImage`): ``y``
      is the BT.601 luminance divided by ``scale``, so in ``[0, 1]``; the
      chroma is kept in the same ``[0, 1]`` units.
    - Grey (2D array, 3D volume or grey LoadedImage): ``y`` is a ``float64``
      copy with unchanged values (grey medical data has no display scale to
      divide by) and the chroma is ``None``.

    Usage: ``y, chroma = split_luminance(pet)``; fuse ``y`` with the MRI;
    ``rgb = merge_luminance(fused, chroma)``.

    :param image: the image; not modified. A bare 3D array whose last axis has
        3 or 4 entries counts as colour (as in :func:`~MedFusionLib.validation.as_grey_image`);
        wrap a volume in a LoadedImage to say otherwise.
    :param scale: full-scale value of colour data; default 255 for integer
        types, 1.0 for floats (floats in 0..255 need ``scale=255``).
    :returns: ``(y, chroma)``; ``y`` a new array, ``chroma`` a :class:`Chroma` or ``None``.
    :raises InputError: NaN/inf, wrong dimensions, colour values outside ``[0, scale]``.
    """
    if isinstance(image, LoadedImage):
        array = np.asarray(image.array)
        is_color = image.is_color
    else:
        array = np.asarray(image)
        is_color = array.ndim == 3 and array.shape[-1] in (3, 4)
    if not is_color:
        grey, _ = _grey_data(array, "image to split")
        return np.array(grey, dtype=np.float64, copy=True), None
    _check_numeric(array, "image to split")
    if array.ndim != 3:
        raise InputError(f"image to split: expected an (H, W, 3|4) colour image, got shape {array.shape}")
    full_scale = _default_colour_scale(array) if scale is None else _scale(scale)
    y, cb, cr = rgb_to_ycbcr(_colour_array(array, "image to split", full_scale) / full_scale, scale=1.0)
    return y, Chroma(cb, cr)


def merge_luminance(y: ImageLike, chroma: Optional[Chroma], clip: bool = True) -> np.ndarray:
    """Re-attach the colour kept by :func:`split_luminance` to a (fused) luminance.

    :param y: the luminance, in ``[0, 1]`` for colour (as :func:`split_luminance` gave it).
    :param chroma: the :class:`Chroma` from :func:`split_luminance`, or ``None`` for grey.
    :param clip: clip the RGB result to ``[0, 1]`` (default).
    :returns: ``(H, W, 3)`` ``float64`` RGB in ``[0, 1]``; with ``chroma=None``, a
        ``float64`` copy of ``y``.
    :raises InputError: shapes differ, bad chroma, NaN/inf.
    """
    values = np.asarray(y.array if isinstance(y, LoadedImage) else y)
    if chroma is None:
        grey, _ = _grey_data(values, "luminance")
        return np.array(grey, dtype=np.float64, copy=True)
    if not isinstance(chroma, Chroma):
        raise InputError(
            f"chroma: expected the Chroma from split_luminance() or None, got {type(chroma).__name__}"
        )
    if values.shape != np.shape(chroma.cb):
        raise InputError(
            f"luminance: shape {values.shape} differs from the chroma shape {np.shape(chroma.cb)}"
        )
    return ycbcr_to_rgb(values, chroma.cb, chroma.cr, scale=1.0, clip=clip)

"""Which Python packages MedFusion needs, which of them are missing or too old, and installing them in Slicer.

What MedFusionLib needs besides PyTorch is listed in ``Resources/requirements.txt`` (the versions
of ``pyproject.toml``); PyTorch comes through the PyTorch extension's ``PyTorchUtils``, which picks
the build that matches the GPU driver (or the CPU build), so it is :data:`TORCH_REQUIREMENT` here.

The checks read the installed distributions' metadata (:mod:`importlib.metadata`) and compare
versions with the specifiers (``packaging``, when importable); nothing is imported to check it.
This module imports only the standard library at load time: the module widget imports it while
Slicer starts, and the batch script (``Resources/Scripts/fuse_folder.py``) imports it before it
knows whether anything else is installed. ``slicer`` and ``qt`` are imported only by
:func:`ensure_in_slicer`, which is the one function that needs the Slicer application.

Installing, in :func:`ensure_in_slicer` (only on first use, after asking, never in testing mode):

- Slicer 5.12 and later: ``slicer.packaging.pip_ensure`` with the requirements of
  ``slicer.packaging.load_requirements(requirements.txt)``: it honours the version specifiers,
  shows its progress dialog and offers a restart when an already imported package was updated;
- Slicer 5.8 and 5.10: ``slicer.util.pip_install`` of exactly the unmet requirements, and a
  restart offer when one of them was already imported;
- PyTorch, in both: ``PyTorchUtils.PyTorchUtilsLogic().installTorch(torchVersionRequirement=...)``.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

#: The requirements file the extension installs next to this package (``<module>/Resources``).
REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"
#: PyTorch, installed through PyTorchUtils (same specifier as ``pyproject.toml``).
TORCH_REQUIREMENT = "torch>=2.1,<3"
#: NumPy ships with Slicer; outside Slicer (the batch script with ``slicer-core``) it is checked too.
NUMPY_REQUIREMENT = "numpy>=1.23"
#: The MRML library outside Slicer; inside Slicer the application provides ``slicer``.
SLICER_CORE_REQUIREMENT = "slicer-core"
#: Name shown in Slicer's install and restart dialogs.
REQUESTER = "MedFusion"
#: Distribution name -> the import name, to tell whether an updated package was already imported.
IMPORT_NAMES = {"scikit-image": "skimage", "pywavelets": "pywt", "simpleitk": "SimpleITK",
                "pytorch-msssim": "pytorch_msssim"}

_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class UnmetRequirement:
    """A requirement the running Python does not satisfy: not installed, or installed at another version."""

    requirement: str  #: as written, e.g. ``"scipy>=1.10"``
    name: str  #: the distribution name, e.g. ``"scipy"``
    installed: Optional[str]  #: the installed version, or None when it is not installed

    def __str__(self) -> str:
        state = "not installed" if self.installed is None else f"installed {self.installed}"
        return f"{self.requirement} ({state})"


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file: comments, blank lines and pip options left out."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def module_requirements() -> list[str]:
    """What the module needs inside Slicer: ``requirements.txt`` and PyTorch."""
    return [*read_requirements(), TORCH_REQUIREMENT]


def batch_requirements(in_slicer: bool) -> list[str]:
    """What the batch script needs: the module's requirements, and outside Slicer NumPy as well."""
    return module_requirements() if in_slicer else [NUMPY_REQUIREMENT, *module_requirements()]


def _packaging():
    """``(Requirement, Version)`` from ``packaging`` (or pip's vendored copy), or None when neither imports."""
    for prefix in ("packaging", "pip._vendor.packaging"):
        try:
            requirements = importlib.import_module(f"{prefix}.requirements")
            version = importlib.import_module(f"{prefix}.version")
        except ImportError:
            continue
        return requirements.Requirement, version.Version
    return None


def installed_version(name: str) -> Optional[str]:
    """The installed version of a distribution (any spelling of its name), or None."""
    spellings = dict.fromkeys([name, name.lower(), name.replace("-", "_"), name.lower().replace("-", "_")])
    for spelling in spellings:
        try:
            return importlib.metadata.version(spelling)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def unmet_requirements(requirements: Iterable[str]) -> list[UnmetRequirement]:
    """The requirements the running Python does not satisfy, in the order given.

    A requirement is met when its distribution is installed at a version its specifier accepts
    (pre-releases accepted), or when its environment marker does not apply here. Without
    ``packaging`` only presence can be checked, and an installed package counts as met.
    """
    tools = _packaging()
    unmet = []
    for text in requirements:
        if tools is None:
            match = _NAME.match(text)
            if match is None:
                raise ValueError(f"not a requirement: {text!r}")
            name, specifier, marker = match.group(1), None, None
        else:
            requirement = tools[0](text)
            name, specifier, marker = requirement.name, requirement.specifier, requirement.marker
        if marker is not None and not marker.evaluate():
            continue
        version = installed_version(name)
        if version is None:
            unmet.append(UnmetRequirement(text, name, None))
        elif specifier is not None and not specifier.contains(version, prereleases=True):
            unmet.append(UnmetRequirement(text, name, version))
    return unmet


def in_slicer_application() -> bool:
    """True inside the Slicer application (``slicer.app`` exists), False in plain Python or PythonSlicer."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def install_message(unmet: Sequence[UnmetRequirement], in_slicer: bool) -> str:
    """One line: what is missing or too old, and exactly how to install it."""
    what = "MedFusion needs Python packages that are missing or too old: " + ", ".join(map(str, unmet)) + "."
    if in_slicer:
        return what + (" Install them from Slicer: open the MedFusion module and press Fuse, which offers to "
                       "install them (PyTorch through the PyTorch extension), then run this script again.")
    python = f'"{sys.executable}"' if " " in sys.executable else (sys.executable or "python")
    packages = " ".join(f'"{u.requirement}"' for u in unmet)
    return what + f" Install them with: {python} -m pip install {packages}"


# ------------------------------------------------------------------------------------ in Slicer


def ensure_in_slicer(askConfirmation: bool = True) -> bool:
    """Install what the module needs, on first use and after asking; never in testing mode.

    :param askConfirmation: ask before installing (batch scripts in Slicer pass False).
    :returns: True when every requirement is met; False when the user declined, or in testing mode
        (``slicer.app.testingEnabled()``), where nothing is ever installed.
    :raises RuntimeError: installing failed (e.g. offline), the PyTorch extension is missing, or an
        installed PyTorch is too old; the message says what to do.
    """
    import slicer

    unmet = unmet_requirements(module_requirements())
    if not unmet:
        return True
    if slicer.app.testingEnabled():
        logging.warning("MedFusion: testing mode, nothing installed; unmet: %s", ", ".join(map(str, unmet)))
        return False
    torch = next((u for u in unmet if u.name == "torch"), None)
    if torch is not None and torch.installed is not None:
        raise RuntimeError(
            f"PyTorch {torch.installed} is installed, but MedFusion needs {TORCH_REQUIREMENT}. Open the PyTorch Utils "
            "module, uninstall PyTorch, restart Slicer, and press Fuse again: a matching version is then installed."
        )
    if askConfirmation and not slicer.util.confirmOkCancelDisplay(
        "MedFusion needs these Python packages, which are missing or too old:\n\n"
        + "\n".join(f"- {u}" for u in unmet)
        + "\n\nInstalling them needs a network connection and may take several minutes "
        "(PyTorch comes through the PyTorch extension). Install now?",
        f"{REQUESTER} - Install Python Packages",
    ):
        return False
    try:
        if torch is not None:
            _install_torch()
        others = [u for u in unmet if u.name != "torch"]
        if others:
            _install_packages(others)
    except RuntimeError:
        raise
    except Exception as error:  # pip failed (CalledProcessError), e.g. offline
        packages = " ".join(u.requirement for u in unmet)
        raise RuntimeError(
            f"Installing {packages} failed ({error}). Without a network connection, install them from a machine "
            f"that has one; in Slicer's Python console: slicer.util.pip_install('{packages}')."
        ) from error
    still = unmet_requirements(module_requirements())
    if still:
        raise RuntimeError("Still missing or too old after installing: " + ", ".join(map(str, still))
                           + ". Restart Slicer and try again.")
    return True


def _install_torch() -> None:
    try:
        import PyTorchUtils
    except ModuleNotFoundError:
        raise RuntimeError("MedFusion needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, "
                           "restart Slicer, and press Fuse again.") from None
    specifier = TORCH_REQUIREMENT[len("torch"):]
    if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=specifier) is None:
        raise RuntimeError("PyTorch could not be installed; see the Python console.")


def _install_packages(unmet: Sequence[UnmetRequirement]) -> None:
    import slicer

    try:
        import slicer.packaging as packaging
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure") and hasattr(packaging, "load_requirements"):
        # Slicer >= 5.12: checks the specifiers itself, shows progress and offers a restart when an
        # updated package was already imported. We asked already (one dialog, PyTorch included).
        packaging.pip_ensure(packaging.load_requirements(REQUIREMENTS_FILE), requester=REQUESTER, prompt_install=False)
        return
    # Slicer 5.8 / 5.10: install exactly the unmet requirements; restart when one was imported already
    # (Slicer imports SciPy at startup, for instance), since the old version stays loaded until then.
    slicer.util.pip_install([u.requirement for u in unmet])
    loaded = [u for u in unmet if IMPORT_NAMES.get(u.name.lower(), u.name) in sys.modules]
    if loaded and slicer.util.confirmYesNoDisplay(
        "These updated packages were already loaded and work correctly only after a restart: "
        + ", ".join(u.name for u in loaded) + ". Restart Slicer now?",
        f"{REQUESTER} - Restart Recommended",
    ):
        slicer.util.restart()

"""The dependency check of the MedFusion Slicer module and its batch script, run for real in plain Python.

``MedFusionSlicerLib.dependencies`` reads ``Resources/requirements.txt`` and compares the installed
distributions (``importlib.metadata``) with the version specifiers; these tests run it against the
environment the tests run in. Installing inside Slicer (``ensure_in_slicer``: ``slicer.packaging.pip_ensure``
on Slicer >= 5.12, ``slicer.util.pip_install`` before, PyTorch through PyTorchUtils) needs the Slicer
application and is not run here. The batch script is run in a subprocess without site-packages
(``python -S``), where nothing it needs is installed, to check that it says what to install in one line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MedFusion"
SCRIPT = MODULE_DIR / "Resources" / "Scripts" / "fuse_folder.py"

sys.path.insert(0, str(MODULE_DIR))
from MedFusionSlicerLib import dependencies  # noqa: E402
from MedFusionSlicerLib.dependencies import UnmetRequirement, unmet_requirements  # noqa: E402

NUMPY = importlib.metadata.version("numpy")


def _fuse_folder():
    spec = importlib.util.spec_from_file_location("fuse_folder_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------ requirements.txt


def test_read_requirements_of_the_shipped_file():
    lines = dependencies.read_requirements()
    assert lines == ["scipy>=1.10", "scikit-image>=0.21", "PyWavelets>=1.4", "SimpleITK>=2.2", "Pillow>=9",
                     "tifffile>=2022.5.4", "pytorch-msssim>=1.0"]
    assert dependencies.module_requirements() == [*lines, "torch>=2.1,<3"]
    assert dependencies.batch_requirements(in_slicer=True) == dependencies.module_requirements()
    assert dependencies.batch_requirements(in_slicer=False) == ["numpy>=1.23", *dependencies.module_requirements()]


def test_read_requirements_skips_comments_blank_lines_and_pip_options(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# a comment\n\nscipy>=1.10  # inline comment\n-r other.txt\n--index-url https://x\n"
                    "  SimpleITK>=2.2\nfoo; python_version < '3'\n", encoding="utf-8")
    assert dependencies.read_requirements(path) == ["scipy>=1.10", "SimpleITK>=2.2", "foo; python_version < '3'"]


# ------------------------------------------------------------------------------------------ unmet requirements


def test_too_old_missing_and_met_requirements_against_the_real_environment():
    assert unmet_requirements(["numpy>=999"]) == [UnmetRequirement("numpy>=999", "numpy", NUMPY)]
    assert unmet_requirements(["nonexistent-pkg-xyz"]) == [UnmetRequirement("nonexistent-pkg-xyz", "nonexistent-pkg-xyz", None)]
    assert unmet_requirements(["numpy>=1"]) == []
    assert unmet_requirements([f"numpy<{NUMPY}"])[0].installed == NUMPY  # an upper bound counts as well
    # Order kept, only the unmet ones reported.
    unmet = unmet_requirements(["numpy>=1", "nonexistent-pkg-xyz>=2", "numpy>=999"])
    assert [u.requirement for u in unmet] == ["nonexistent-pkg-xyz>=2", "numpy>=999"]


def test_names_in_any_spelling_and_markers_that_do_not_apply():
    # Distribution names are case- and separator-insensitive (PyWavelets, scikit-image, SimpleITK).
    assert unmet_requirements(["pywavelets>=1.4", "scikit_image>=0.21", "simpleitk>=2.2", "Scikit-Image>=0.21"]) == []
    # A requirement whose environment marker does not apply here is met.
    assert unmet_requirements(['nonexistent-pkg-xyz; python_version < "3"']) == []
    assert unmet_requirements(['nonexistent-pkg-xyz; python_version >= "3"'])[0].installed is None


def test_the_test_environment_satisfies_what_the_module_and_the_batch_script_need():
    assert unmet_requirements(dependencies.batch_requirements(in_slicer=False)) == []


def test_a_local_version_label_satisfies_the_torch_specifier():
    """torch wheels carry labels such as '2.4.0+cpu' or '2.4.0+cu121'; they must count as 2.4.0."""
    torch = importlib.metadata.version("torch")
    assert unmet_requirements([dependencies.TORCH_REQUIREMENT]) == []
    assert unmet_requirements([f"torch>={torch.split('+')[0]}"]) == []


def test_messages_say_what_is_missing_and_exactly_how_to_install_it():
    unmet = [UnmetRequirement("torch>=2.1,<3", "torch", None), UnmetRequirement("scipy>=1.10", "scipy", "1.9.3")]
    assert str(unmet[0]) == "torch>=2.1,<3 (not installed)" and str(unmet[1]) == "scipy>=1.10 (installed 1.9.3)"
    outside = dependencies.install_message(unmet, in_slicer=False)
    assert "\n" not in outside
    assert "torch>=2.1,<3 (not installed), scipy>=1.10 (installed 1.9.3)" in outside
    assert outside.endswith(f'{sys.executable} -m pip install "torch>=2.1,<3" "scipy>=1.10"')
    inside = dependencies.install_message(unmet, in_slicer=True)
    assert "\n" not in inside and "pip install" not in inside and "press Fuse" in inside


def test_plain_python_is_not_the_slicer_application():
    assert not dependencies.in_slicer_application()  # slicer-core's slicer has no app


# ------------------------------------------------------------------------------------------ load-time weight


def test_the_module_loads_and_checks_without_site_packages():
    """Imported at Slicer's startup and by the batch script before anything is checked: standard library
    only. Without site-packages (no packaging either) it still reports what is missing."""
    code = (
        f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r})\n"
        "from MedFusionSlicerLib import dependencies as d\n"
        "unmet = d.unmet_requirements(['numpy>=1.23', 'scipy'])\n"
        "print([u.name for u in unmet], [u.installed for u in unmet])\n"
        "print(sorted(m for m in ('numpy', 'slicer', 'torch', 'packaging', 'qt', 'MedFusionLib') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['numpy', 'scipy'] [None, None]", "[]"]


# ------------------------------------------------------------------------------------------ the batch script


def test_batch_script_says_what_to_install_in_one_line(tmp_path):
    """Run where nothing is installed (no site-packages): one line naming every package, exit status 1,
    no traceback, nothing read or written."""
    (tmp_path / "in" / "case").mkdir(parents=True)
    done = subprocess.run([sys.executable, "-S", str(SCRIPT), str(tmp_path / "in"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for requirement in ("numpy>=1.23", "scipy>=1.10", "scikit-image>=0.21", "PyWavelets>=1.4", "SimpleITK>=2.2",
                        "torch>=2.1,<3", "slicer-core"):
        assert f"{requirement} (not installed)" in lines[0] and f'"{requirement}"' in lines[0], requirement
    assert f"{sys.executable} -m pip install " in lines[0]
    assert not (tmp_path / "out").exists()


def test_batch_script_reports_a_too_old_package(tmp_path, monkeypatch):
    module = _fuse_folder()
    problem = module.dependency_problem(["numpy>=999", "numpy>=1"])
    assert problem is not None and "\n" not in problem
    assert f"numpy>=999 (installed {NUMPY})" in problem and 'pip install "numpy>=999"' in problem
    assert module.dependency_problem() is None  # this environment has everything
    # main() checks before it reads anything, and exits with that line.
    monkeypatch.setattr(dependencies, "batch_requirements", lambda in_slicer: ["numpy>=999"])
    with pytest.raises(SystemExit) as exit_:
        module.main([str(tmp_path), str(tmp_path / "out")])
    assert exit_.value.code == module.dependency_problem() and "numpy>=999" in exit_.value.code
    assert not (tmp_path / "out").exists()

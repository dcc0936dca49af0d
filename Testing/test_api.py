"""The top-level API: lazy exports, SimpleITK images in and out, and fast refusals of anything else."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import MedFusionLib
from MedFusionLib import InputError, LoadedImage, fuse, fuse_volume
from MedFusionLib.data.phantoms import make_pair


def test_import_is_cheap_and_exports_resolve_on_first_use():
    code = ("import sys, MedFusionLib; print(sorted(m for m in ('torch', 'SimpleITK', 'scipy') if m in sys.modules)); "
            "from MedFusionLib import fuse; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True"  # nothing heavy until a fusion function is touched
    assert {"fuse", "fuse_volume", "fuse_files", "evaluate", "FusionModel"} <= set(dir(MedFusionLib))
    assert set(MedFusionLib.__all__) >= {"fuse", "fuse_volume", "fuse_files", "evaluate", "FusionModel"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        MedFusionLib.nope  # noqa: B018


def _sitk_pair(depth: int = 6):
    pair = make_pair((32, 40, 36), ("CT", "MRI_T1"), seed=7)
    images = []
    for name in ("CT", "MRI_T1"):
        pair.images[name] = pair.images[name][:depth]
        image = sitk.GetImageFromArray(pair.images[name])
        image.SetSpacing((0.8, 0.9, 2.5))
        image.SetOrigin((10.0, -20.5, 33.25))
        image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        images.append(image)
    return images, [pair.images["CT"], pair.images["MRI_T1"]]


def test_simpleitk_volumes_in_a_simpleitk_volume_out_with_the_first_ones_geometry():
    images, arrays = _sitk_pair()
    result = fuse_volume(images, method := "average")
    fused = result.image
    assert isinstance(fused, sitk.Image) and result.method == method and result.dimension == 3
    for get in ("GetSpacing", "GetOrigin", "GetDirection", "GetSize"):
        assert getattr(fused, get)() == getattr(images[0], get)(), get
    expected = fuse_volume([LoadedImage.from_array(a) for a in arrays], "average").array
    np.testing.assert_array_equal(sitk.GetArrayFromImage(fused), expected)
    # the default model too, and a LoadedImage first gives a LoadedImage back
    assert isinstance(fuse_volume(images).image, sitk.Image)
    assert isinstance(fuse_volume([LoadedImage.from_sitk(images[0]), images[1]], "average").image, LoadedImage)


def test_2d_and_3d_results_are_one_type_with_image_method_time_and_contributions(tmp_path):
    from MedFusionLib import fuse_files
    from MedFusionLib.fusion import FusionResult

    images, arrays = _sitk_pair(3)
    results = [fuse([a[0] for a in arrays]), fuse_volume(images), fuse_volume(images, contributions=True)]
    written = fuse_files([_write(tmp_path, "a.nii.gz", images[0]), _write(tmp_path, "b.nii.gz", images[1])],
                         tmp_path / "out.nii.gz")
    for result in [*results, written]:
        assert type(result) is FusionResult and result.method == "cnn model" and result.seconds > 0
        assert result.array.dtype == np.float32 and 0 <= result.array.min() <= result.array.max() <= 1
    assert [r.dimension for r in (*results, written)] == [2, 3, 3, 3]
    assert results[0].contributions is None and results[1].contributions is None
    shares = results[2].contributions  # one volume per input, of the inputs' kind and on their grid
    assert len(shares) == 2 and all(isinstance(s, sitk.Image) for s in shares)
    assert shares[0].GetOrigin() == images[0].GetOrigin() and shares[0].GetSpacing() == images[0].GetSpacing()
    total = sitk.GetArrayFromImage(shares[0]) + sitk.GetArrayFromImage(shares[1])
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    np.testing.assert_array_equal(results[2].array, results[1].array)  # asking for the map changes nothing else
    assert written.path == tmp_path / "out.nii.gz" and written.path.is_file()


def _write(folder, name, image):
    path = folder / name
    sitk.WriteImage(image, str(path))
    return path


def test_simpleitk_volumes_on_different_grids_are_refused():
    images, _ = _sitk_pair()
    moved = sitk.Image(images[1])
    moved.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InputError, match="origin, spacing or direction differ"):
        fuse_volume([images[0], moved], "average")


def test_2d_simpleitk_images_fuse():
    images, arrays = _sitk_pair(1)
    slices = [image[:, :, 0] for image in images]
    result = fuse(slices, "average")
    np.testing.assert_allclose(result.image, fuse([a[0] for a in arrays], "average").image)


class _NeverIterate:
    """Would take seconds if NumPy walked it element by element (as it does a SimpleITK.Image)."""

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, index):
        raise AssertionError("the input was iterated instead of refused")


@pytest.mark.parametrize("bad", [_NeverIterate(), {"a": 1}, "ct.nii.gz", 3.0])
def test_unsupported_inputs_are_refused_at_once_naming_what_is_accepted(bad):
    images, _ = _sitk_pair()
    with pytest.raises(InputError, match="NumPy array, a SimpleITK.Image or a MedFusionLib LoadedImage"):
        fuse_volume([images[0], bad], "average")
    with pytest.raises(InputError, match="NumPy array, a SimpleITK.Image or a MedFusionLib LoadedImage"):
        fuse([np.zeros((8, 8)), bad], "average")


def test_the_command_line_parser_loads_no_study_nor_torch():
    """`medfusion --help` builds every subcommand's parser, the experiments' too: nothing heavy may load."""
    code = ("import sys; from MedFusionLib.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m in ('torch', 'SimpleITK', 'scipy', 'MedFusionLib.experiments.compare')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
    import MedFusionLib.experiments as experiments

    assert all(getattr(experiments, name) is not None for name in experiments.__all__)  # every lazy name resolves


def _package_modules():
    import ast
    from pathlib import Path

    root = Path(MedFusionLib.__file__).parent
    for path in sorted([*root.rglob("*.py"), *(root.parent / "MedFusion" / "MedFusionSlicerLib").glob("*.py")]):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_progress_and_cancel_types_have_one_home():
    import ast

    homes = {}
    for path, tree in _package_modules():
        for node in tree.body:
            names = ([t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign)
                     else [node.name] if isinstance(node, ast.ClassDef) else [])
            for name in names:
                if name in ("ProgressCallback", "CancelFlag", "_CancelFlag", "ProgressBar"):
                    homes.setdefault(name, []).append(path.name)
    assert homes == {"ProgressCallback": ["progress.py"], "CancelFlag": ["progress.py"], "ProgressBar": ["progress.py"]}


def test_no_module_imports_the_command_line_front_end():
    """The CLI sits on top: nothing below it imports it (experiments/cli.py once did, for the progress bar)."""
    import ast

    for path, tree in _package_modules():
        if path.name == "cli.py" and path.parent.name == "MedFusionLib":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = ("." * node.level) + (node.module or "")
                assert target not in ("..cli", "MedFusionLib.cli") and not (
                    path.parent.name == "MedFusionLib" and target == ".cli"), (path, node.lineno)


def test_one_name_for_the_method_and_one_spelling_of_off(tmp_path):
    """``method=`` everywhere (as the CLI's --method and the Slicer module say); ``model=`` and ``"none"`` still
    work for one release, with a DeprecationWarning."""
    from MedFusionLib import fuse_files, write_image
    from MedFusionLib.batch import Group, run_batch

    rng = np.random.default_rng(0)
    images = [rng.random((32, 32)).astype(np.float32) for _ in range(2)]
    expected = fuse(images, method="average").image
    with pytest.warns(DeprecationWarning, match="use method="):
        np.testing.assert_array_equal(fuse(images, model="average").image, expected)
    with pytest.raises(InputError, match="model= is its old name"):
        fuse(images, "laplacian", model="average")
    paths = [write_image(LoadedImage.from_array(x), tmp_path / f"in{i}.nii.gz") for i, x in enumerate(images)]
    with pytest.warns(DeprecationWarning, match="register=None"):
        fuse_files(paths, tmp_path / "out.nii.gz", method="average", register="none")
    with pytest.warns(DeprecationWarning, match="use method="):
        report = run_batch([Group("g", tuple(paths))], tmp_path / "batch", model="average", metrics=False)
    assert report.done == 1


#: The layers of MedFusionLib, bottom up: a module may import its own layer's modules and those below.
LAYERS = {
    "__init__": 0, "errors": 0, "validation": 0, "progress": 0, "io": 0, "optional": 0,   # foundation
    "preprocessing": 1, "baselines": 1, "engine": 1, "contributions": 1,  # building blocks
    "fusion": 2,                                                           # the fusion API
    "metrics": 3, "data": 3,                                               # scoring, phantoms and targets
    "batch": 4, "recipes": 4, "cluster": 4,                                             # many cases, training recipes
    "experiments": 5,                                                      # the papers' studies
    "cli": 6,                                                              # the command line on top
}


def _imported_units(path, tree, root):
    import ast

    package = list(path.relative_to(root).parts[:-1])
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if node.module and node.module.split(".")[0] == "MedFusionLib":
                parts = node.module.split(".")[1:]
                yield (parts[0] if parts else "__init__"), node.lineno
            continue
        base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
        full = base + (node.module.split(".") if node.module else [])
        if full:
            yield full[0], node.lineno
        else:  # from . import name
            for alias in node.names:
                yield (alias.name if alias.name in LAYERS else "__init__"), node.lineno


def test_no_module_imports_a_layer_above_it():
    """The layout shows the architecture: foundation -> engine -> fusion API -> front ends, never upward."""
    import ast
    from pathlib import Path

    root = Path(MedFusionLib.__file__).parent
    units = {p.relative_to(root).parts[0].removesuffix(".py") for p in root.rglob("*.py")}
    assert units == set(LAYERS), units ^ set(LAYERS)
    for path in root.rglob("*.py"):
        unit = path.relative_to(root).parts[0].removesuffix(".py")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for target, line in _imported_units(path, tree, root):
            assert LAYERS[target] <= LAYERS[unit], f"{path.relative_to(root)}:{line} imports {target} (a layer above)"
        for node in ast.walk(tree):  # and nothing of Slicer: MedFusionLib runs in plain Python
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("slicer", "qt", "ctk", "MedFusionSlicerLib") for n in names)


def test_no_import_cycles_between_modules():
    """Counting imports inside functions too: no module reaches itself again through its imports."""
    import ast
    from pathlib import Path

    root = Path(MedFusionLib.__file__).parent

    def name_of(path: Path) -> str:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            # "from . import fmi" imports the submodule, not the package's own code
            for imported in submodules if len(submodules) == len(node.names) else [target, *submodules]:
                if imported in modules and imported != module:
                    edges[module].add(imported)

    def reaches(start: str) -> bool:
        seen, stack = set(), list(edges[start])
        while stack:
            current = stack.pop()
            if current == start:
                return True
            if current not in seen:
                seen.add(current)
                stack.extend(edges[current])
        return False

    assert [m for m in modules if reaches(m)] == []


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """The README's Python block, run as written on two registered phantom volumes."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"From Python.*?```python\n(.*?)```", readme, re.S).group(1)
    images, arrays = _sitk_pair(3)
    monkeypatch.chdir(tmp_path)
    sitk.WriteImage(images[0], "ct.nii.gz")
    sitk.WriteImage(images[1], "mri.nii.gz")
    namespace = {"ct_array": arrays[0][1], "mri_array": arrays[1][1]}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 -- our own documentation
    share = sitk.ReadImage("ct_share.nii.gz")
    assert share.GetOrigin() == images[0].GetOrigin() and (tmp_path / "fused.nii.gz").is_file()
    assert {"QABF", "MI"} <= set(namespace["scores"]) and "QABF" in namespace["volume_scores"].metrics

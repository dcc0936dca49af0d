"""Static checks of the MedFusion Slicer extension: what can be verified without the Slicer application.

The widget needs Slicer's Qt application, which cannot run here, so it is kept thin and
checked statically: the ``.ui`` parses, every widget the module code uses exists with a
plausible class, every parameter of the ``parameterNodeWrapper`` (a parameter pack's members by
their dotted names) is bound to a widget that can represent it (the rules of Slicer's
``parameterNodeWrapper/guiConnectors.py``), the choice lists (``MedFusionSlicerLib.choices``,
imported for real) match MedFusionLib, the CMake lists name exactly the files that exist, and the
Extensions Index entry agrees with the CMake metadata. The MRML logic itself is tested against a
real scene in ``test_slicer_logic.py``; the dependency check in ``test_slicer_dependencies.py``.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "MedFusion"
MODULE_FILE = MODULE_DIR / "MedFusion.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedFusion.ui"
ICON_FILE = MODULE_DIR / "Resources" / "Icons" / "MedFusion.png"
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
HELPERS_DIR = MODULE_DIR / "MedFusionSlicerLib"
# Screenshots are fetched by URL (Extensions Index, README), not installed with the module.
SCREENSHOTS_DIR = MODULE_DIR / "Resources" / "Screenshots"
UI_PREVIEW_SCRIPT = ROOT / "docs" / "render_slicer_ui_preview.py"

sys.path.insert(0, str(MODULE_DIR))
from MedFusionSlicerLib import choices, dependencies  # noqa: E402 (plain Python: no Slicer, NumPy or PyTorch)

# Extensions Index catalog entry schema (Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.x):
# "additionalProperties": false, so homepage/contributors/description can only live in CMake.
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}
SCHEMA_PROPERTIES = SCHEMA_REQUIRED | {
    "scm_revision", "scm_type", "build_dependencies", "dicom_support_rule", "build_subdirectory", "enabled", "tier",
}


# ------------------------------------------------------------------------------------------ helpers


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def _module_class(name: str) -> ast.ClassDef:
    return next(n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == name)


def _value(node: ast.expr):
    """A literal, or a name the module imports from MedFusionSlicerLib.choices."""
    return getattr(choices, node.id) if isinstance(node, ast.Name) else ast.literal_eval(node)


def _helper_files() -> list[Path]:
    return sorted(HELPERS_DIR.glob("*.py"))


def _method_parameters(class_name: str, method: str) -> list[str]:
    """Parameters of a method of a MedFusionSlicerLib class (or of the base class that defines it),
    whichever files define them."""
    classes = {n.name: n for path in _helper_files() for n in ast.parse(path.read_text(encoding="utf-8")).body
               if isinstance(n, ast.ClassDef)}
    pending = [class_name]
    while pending:
        cls = classes[pending.pop(0)]
        function = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
        if function is not None:
            return [a.arg for a in (*function.args.args, *function.args.kwonlyargs) if a.arg != "self"]
        pending += [ast.unparse(b) for b in cls.bases if ast.unparse(b) in classes]
    raise AssertionError(f"{class_name}.{method} is defined nowhere in {HELPERS_DIR.name}")


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _ui_property(widget: ET.Element, name: str):
    prop = next((p for p in widget.findall("property") if p.get("name") == name), None)
    if prop is None:
        return None
    value = prop[0]
    if value.tag == "stringlist":
        return [s.text for s in value.findall("string")]
    return value.text


def _fields(cls: ast.ClassDef) -> dict[str, ast.AnnAssign]:
    return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)}


def _packs() -> dict[str, ast.ClassDef]:
    """The module's @parameterPack classes by name."""
    return {n.name: n for n in _module_tree().body if isinstance(n, ast.ClassDef)
            and [ast.unparse(d) for d in n.decorator_list] == ["parameterPack"]}


def _parameters() -> dict[str, str]:
    """Parameter name -> annotation source, from the @parameterNodeWrapper class; a parameter pack's
    members by their dotted names ("input1.volume"), as the .ui's SlicerParameterName binds them."""
    packs, parameters = _packs(), {}
    for name, field in _fields(_module_class("MedFusionParameterNode")).items():
        annotation = ast.unparse(field.annotation)
        if annotation in packs:
            parameters.update({f"{name}.{member}": ast.unparse(f.annotation)
                               for member, f in _fields(packs[annotation]).items()})
        else:
            parameters[name] = annotation
    return parameters


def _cmake_sets(path: Path) -> dict[str, str]:
    """``set(NAME value...)`` of a CMake file (first occurrence), comments dropped."""
    # comments start at a '#' outside quotes (URLs keep their '#anchor')
    text = re.sub(r'("[^"]*")|#[^\n]*', lambda m: m.group(1) or "", path.read_text(encoding="utf-8"))
    pattern = r'\bset\(\s*(\w+)\s+((?:"[^"]*"|[^)"])*)\)'  # a ')' inside a quoted string does not close
    found: dict[str, str] = {}
    for m in re.finditer(pattern, text, re.S):
        found.setdefault(m.group(1), m.group(2).strip())
    return found


def _cmake_list(value: str, variables: dict[str, str]) -> list[str]:
    for name, replacement in variables.items():
        value = value.replace("${" + name + "}", replacement)
    return value.split()


def _cmake_string(value: str) -> str:
    match = re.fullmatch(r'"(.*)"', value.strip(), re.S)
    assert match, f"expected a quoted CMake string, got {value!r}"
    return match.group(1)


def _extension_metadata() -> dict[str, str]:
    sets = _cmake_sets(ROOT / "CMakeLists.txt")
    return {k: _cmake_string(v) for k, v in sets.items() if k.startswith("EXTENSION_")}


def _raw_github_path(url: str) -> Path:
    """Repository file a raw.githubusercontent.com URL points at (owner/repo/branch/ stripped)."""
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/([^/]+)/(.+)", url)
    assert match, f"not a raw GitHub URL: {url}"
    return ROOT / match.group(4)


def _github_repo(url: str) -> str:
    match = re.match(r"https://(?:raw\.githubusercontent\.com|github\.com)/([^/#]+)/([^/#]+?)(?:\.git)?(?:[/#]|$)", url)
    assert match, f"not a GitHub URL: {url}"
    return f"{match.group(1)}/{match.group(2)}".lower()


# ------------------------------------------------------------------------------------------ module file


def test_module_files_compile():
    for path in [MODULE_FILE, *sorted((MODULE_DIR / "MedFusionSlicerLib").glob("*.py"))]:
        py_compile.compile(str(path), doraise=True)


def test_module_follows_the_scripted_module_template():
    tree = _module_tree()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [ast.unparse(b) for b in cls.bases] for name, cls in classes.items()}
    assert bases["MedFusion"] == ["ScriptedLoadableModule"]
    assert bases["MedFusionWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["MedFusionLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["MedFusionTest"] == ["ScriptedLoadableModuleTest"]
    assert [ast.unparse(d) for d in classes["MedFusionParameterNode"].decorator_list] == ["parameterNodeWrapper"]
    assert "FusionInput" in _packs()  # one (volume, modality) pack per input

    def methods(name: str) -> set[str]:
        return {n.name for n in classes[name].body if isinstance(n, ast.FunctionDef)}

    assert {"setup", "cleanup", "enter", "exit", "onSceneStartClose", "onSceneEndClose",
            "initializeParameterNode", "setParameterNode", "_checkCanApply"} <= methods("MedFusionWidget")
    assert {"getParameterNode", "process", "train", "startBackgroundFusion", "startBackgroundTraining",
            "setupPythonRequirements"} <= methods("MedFusionLogic")
    assert {"setUp", "runTest"} <= methods("MedFusionTest")
    # The logic translates the parameter node through MedFusionSlicerLib.parameters (tested on a scene).
    logic = ast.unparse(classes["MedFusionLogic"])
    for alias in ("inputsFromParameterNode = staticmethod(fusion_inputs)",
                  "argumentsFromParameterNode = staticmethod(fusion_arguments)",
                  "trainingArgumentsFromParameterNode = staticmethod(training_arguments)"):
        assert alias in logic, alias
    source = MODULE_FILE.read_text(encoding="utf-8")
    for needle in ("connectGui(self.ui)", "disconnectGui(", "slicer.util.tryWithErrorDisplay(",
                   "StartCloseEvent", "EndCloseEvent", "qt.QTimer()", "RunController(", "MedFusionLogicCore",
                   "ensure_in_slicer", "waitForCompletion=False", "fusion_problem(", "training_problem("):
        assert needle in source, needle
    # Worker-process runs: no thread events, and scene close / cleanup abandon a run, never wait for it.
    for gone in ("cancelEvent", "wait(timeout=30)", "threading", "onPollTraining", "onPollFusion"):
        assert gone not in source, gone


def test_module_metadata_and_citations():
    init = next(n for n in _module_class("MedFusion").body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    source = ast.unparse(init)
    assert re.search(r"self\.parent\.title = _\('MedFusion'\)", source)
    assert "10.1016/j.ijcce.2020.12.004" in source and "10.3389/fnins.2021.638976" in source  # both papers
    metadata = _extension_metadata()
    assert f'href="{metadata["EXTENSION_HOMEPAGE"]}"' in source  # help links the README's Slicer section
    contributors = next(ast.literal_eval(n.value) for n in ast.walk(init) if isinstance(n, ast.Assign)
                        and ast.unparse(n.targets[0]) == "self.parent.contributors")
    assert ", ".join(contributors) == metadata["EXTENSION_CONTRIBUTORS"]
    assert f"'{metadata['EXTENSION_CATEGORY']}'" in source


# The standard-library modules dependencies.py may import at load time (it is imported while Slicer starts,
# and by the batch script before it knows whether anything else is installed).
_LIGHT_MODULES = {"__future__", "dataclasses", "importlib", "importlib.metadata", "importlib.util", "logging", "os",
                  "pathlib", "re", "shlex", "sys", "typing"}


def _load_time_imports(tree: ast.Module) -> list[tuple[str, ast.stmt]]:
    """(module, statement) of every import at module level (not inside functions)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.module or "", node))
    return found


#: The MedFusionSlicerLib modules MedFusion.py imports when Slicer starts: plain Python, standard library only.
_STARTUP_HELPERS = ("choices", "dependencies", "parameters", "run_controller")


def test_module_imports_nothing_heavy_at_load_time():
    """Slicer imports every module at startup: torch and MedFusionLib only on first use, after the check.

    Of MedFusionSlicerLib exactly the plain-Python modules: the choice lists, the dependency check, the
    parameter translation and the run controller; and these import only the standard library."""
    heavy = {"torch", "MedFusionLib", "MedFusionSlicerLib", "numpy", "SimpleITK", "PyTorchUtils", "scipy", "skimage"}
    allowed = {f"MedFusionSlicerLib.{name}" for name in _STARTUP_HELPERS}
    imported = {module for module, _node in _load_time_imports(_module_tree())}
    assert {m for m in imported if m.split(".")[0] in heavy} == allowed
    for module in _STARTUP_HELPERS:
        tree = ast.parse((HELPERS_DIR / f"{module}.py").read_text())
        light = {m for m, node in _load_time_imports(tree) if not getattr(node, "level", 0)}  # relative: below
        assert light <= _LIGHT_MODULES, (module, light - _LIGHT_MODULES)
        relative = {m for m, node in _load_time_imports(tree) if getattr(node, "level", 0)}
        assert relative <= set(_STARTUP_HELPERS), (module, relative)
    # And at run time, in a fresh interpreter: neither NumPy nor PyTorch is loaded. (slicer is kept out:
    # in the application it is loaded before any module; slicer-core's would load NumPy itself.)
    code = ("import sys; sys.modules['slicer'] = None; sys.path.insert(0, sys.argv[1]); "
            + "; ".join(f"import MedFusionSlicerLib.{m}" for m in _STARTUP_HELPERS)
            + "; print(sorted(m for m in ('numpy', 'torch', 'MedFusionLib', 'SimpleITK') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


# What MedFusionSlicerLib code must not use, so that it runs with slicer-core (no application, no Qt),
# in batch scripts and in the worker process.
_APPLICATION_IMPORTS = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")
_APPLICATION_ATTRIBUTES = ("slicer.app", "slicer.mrmlScene")
_APPLICATION_NAMES = ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "parameterNodeWrapper")
# dependencies.py is the exception: installing packages in Slicer needs slicer.app (testing mode, dialogs),
# slicer.util and slicer.packaging, all imported inside ensure_in_slicer() only.
_APPLICATION_EXEMPT = {"dependencies.py"}


def test_helpers_need_no_slicer_application():
    """Every MedFusionSlicerLib file but dependencies.py: no slicer.app, Qt, ctk, ScriptedLoadableModule,
    parameterNodeWrapper or slicer.mrmlScene in its code (docstrings may name them)."""
    files = [p for p in _helper_files() if p.name not in _APPLICATION_EXEMPT]
    assert {p.name for p in files} >= {"__init__.py", "choices.py"}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                modules = []
            bad = [m for m in modules if any(m == f or m.startswith(f + ".") for f in _APPLICATION_IMPORTS)]
            assert not bad, (path.name, node.lineno, bad)
            if isinstance(node, ast.Attribute):
                assert ast.unparse(node) not in _APPLICATION_ATTRIBUTES, (path.name, node.lineno, ast.unparse(node))
            if isinstance(node, ast.Name):
                assert node.id not in _APPLICATION_NAMES, (path.name, node.lineno, node.id)


def test_gui_choices_match_the_library():
    from MedFusionLib.baselines import BASELINES
    from MedFusionLib.fusion import SHIPPED_MODELS
    from MedFusionLib.preprocessing import DENOISE_DEFAULTS, REGISTRATION_TRANSFORMS

    assert choices.METHOD_CHOICES == [*SHIPPED_MODELS, "model file", *BASELINES]
    assert set(choices.DENOISE_CHOICES) == set(DENOISE_DEFAULTS)
    assert choices.REGISTRATION_CHOICES == ["none", *REGISTRATION_TRANSFORMS]
    assert choices.SLICE_AXIS_CHOICES == ["K", "J", "I"]
    assert set(choices.DEVICE_CHOICES) <= {"auto", "cpu", "gpu", "cuda"} and set(choices.DEVICE_CHOICES) <= set(choices.DEVICES)
    modalities = [m for m in choices.MODALITY_CHOICES if m != "auto"]
    from MedFusionLib.preprocessing import standardise

    for modality in modalities:  # every offered modality is one standardise() accepts
        import numpy as np

        standardise(np.linspace(0, 100, 64, dtype=np.float32).reshape(8, 8), modality)


def test_module_takes_its_choice_lists_from_choices_py():
    """No copies: every *_CHOICES the module uses is imported from MedFusionSlicerLib.choices."""
    tree = _module_tree()
    defined = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert not {name for name in defined if name.endswith("_CHOICES")}, "choice lists belong in choices.py"
    imported = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "MedFusionSlicerLib.choices"
                for a in n.names}
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id.endswith("_CHOICES")}
    assert used and used <= imported
    assert all(hasattr(choices, name) for name in imported)


# ------------------------------------------------------------------------------------------ .ui file


def test_ui_parses_with_a_qmrmlwidget_on_top():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.find("class").text == "MedFusion"
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", "MedFusion")
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    declared = {c.find("class").text for c in root.iter("customwidget")}
    qt_classes = {"QLabel", "QComboBox", "QCheckBox", "QPushButton", "QProgressBar", "QSpinBox"}
    assert {w.get("class") for w in root.iter("widget")} <= declared | qt_classes


# The class a widget's name promises (the convention the template follows), for plausibility.
_SUFFIX_CLASSES = {
    "Selector": {"qMRMLNodeComboBox"},
    "ComboBox": {"QComboBox"},
    "SpinBox": {"QSpinBox"},
    "CheckBox": {"QCheckBox"},
    "CollapsibleButton": {"ctkCollapsibleButton"},
    "Button": {"QPushButton"},
    "Label": {"QLabel"},
    "progressBar": {"QProgressBar"},
    "ProgressBar": {"QProgressBar"},
    "PathLineEdit": {"ctkPathLineEdit"},
}


def _expected_classes(name: str) -> set[str]:
    for suffix, classes in _SUFFIX_CLASSES.items():
        if name.endswith(suffix) or name == suffix:
            return classes
    raise AssertionError(f"widget {name!r}: its name does not say what it is")


def test_every_widget_the_code_uses_exists_with_a_plausible_class():
    used = {n.attr for n in ast.walk(_module_tree()) if isinstance(n, ast.Attribute)
            and ast.unparse(n.value) == "self.ui"}
    assert used, "the module uses no self.ui widgets?"
    widgets = _ui_widgets()
    for name in sorted(used):
        assert name in widgets, f"self.ui.{name} is not in {UI_FILE.name}"
        assert widgets[name].get("class") in _expected_classes(name), (name, widgets[name].get("class"))
    for name, widget in widgets.items():  # the whole .ui follows the naming convention
        if name != "MedFusion":
            assert widget.get("class") in _expected_classes(name), (name, widget.get("class"))


def _connector_classes(annotation: str) -> set[str]:
    """Widget classes parameterNodeWrapper's guiConnectors.py can bind to this parameter type, plus the
    module's own connector for ``Optional[pathlib.Path]`` (an empty path field is None, not Path('.'))."""
    base = re.sub(r"^Annotated\[(\w[\w.]*),.*\]$", r"\1", annotation)
    if base.startswith("vtkMRML"):
        return {"qMRMLNodeComboBox"}
    if "Choice(" in annotation:
        return {"QComboBox"}
    return {
        "bool": {"QCheckBox", "QPushButton"},
        "int": {"QSpinBox", "QSlider"},
        "float": {"QDoubleSpinBox", "ctkSliderWidget"},
        "str": {"QLineEdit", "QTextEdit"},
        "pathlib.Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
        "Optional[pathlib.Path]": {"ctkPathLineEdit"},
    }[base]


def test_optional_paths_have_a_registered_connector_and_no_dot_default():
    """Slicer's ctkPathLineEdit connector binds only pathlib.Path, whose default Path() shows '.': the
    module binds Optional[pathlib.Path] = None through its own @parameterNodeGuiConnector."""
    cls = _module_class("ctkPathLineEditToOptionalPathConnector")
    assert [ast.unparse(d) for d in cls.decorator_list] == ["parameterNodeGuiConnector"]
    assert [ast.unparse(b) for b in cls.bases] == ["GuiConnector"]
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    assert {"canRepresent", "create", "_connect", "_disconnect", "widget", "read", "write"} <= methods
    assert "Optional[pathlib.Path]" in ast.unparse(cls)
    fields = _fields(_module_class("MedFusionParameterNode"))
    paths = {name: f for name, f in fields.items() if "pathlib" in ast.unparse(f.annotation)}
    assert set(paths) == {"modelFile", "trainingFolder", "trainingOutputModel"}
    for name, field in paths.items():
        assert ast.unparse(field.annotation) == "Optional[pathlib.Path]" and ast.unparse(field.value) == "None", name


def test_every_parameter_is_bound_to_a_widget_that_can_represent_it():
    parameters = _parameters()
    bound = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", "SlicerParameterName must be a dynamic property"
                bound.setdefault(prop[0].text, []).append(widget)
    assert set(bound) == set(parameters), (set(parameters) ^ set(bound))
    for name, annotation in parameters.items():
        assert len(bound[name]) == 1, f"{name} is bound to {len(bound[name])} widgets"
        widget = bound[name][0]
        assert widget.get("class") in _connector_classes(annotation), (name, annotation, widget.get("class"))
        if widget.get("class") == "qMRMLNodeComboBox":
            assert _ui_property(widget, "nodeTypes") == [annotation]


def test_choice_defaults_are_among_the_choices():
    for cls in (_module_class("MedFusionParameterNode"), *_packs().values()):
        for name, node in _fields(cls).items():
            if "Choice(" in ast.unparse(node.annotation):
                choices_name = re.search(r"Choice\((\w+)\)", ast.unparse(node.annotation)).group(1)
                assert _value(node.value) in getattr(choices, choices_name), (cls.name, name)


def test_every_mrml_widget_receives_the_scene():
    root = ET.parse(UI_FILE).getroot()
    receivers = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("sender").text == "MedFusion" and c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos == receivers


def test_output_selector_never_offers_label_maps():
    widgets = _ui_widgets()
    for name in ("outputVolumeSelector", "inputVolume1Selector", "inputVolume2Selector", "targetVolumeSelector",
                 "trainingTargetVolumeSelector"):
        assert _ui_property(widgets[name], "showChildNodeTypes") == "false", name  # no label maps / vector volumes


def test_train_section_is_collapsed_and_holds_the_training_widgets():
    root = ET.parse(UI_FILE).getroot()
    section = next(w for w in root.iter("widget") if w.get("name") == "trainCollapsibleButton")
    assert section.get("class") == "ctkCollapsibleButton" and _ui_property(section, "collapsed") == "true"
    inside = {w.get("name") for w in section.iter("widget")} - {"trainCollapsibleButton"}
    assert {"trainingSourceComboBox", "trainingTargetVolumeSelector", "trainingFolderPathLineEdit",
            "trainingFamilyComboBox", "trainingBlockSizeComboBox", "trainingIterationsSpinBox",
            "trainingOutputModelPathLineEdit", "trainButton", "trainProgressBar", "trainStatusLabel"} <= inside
    widgets = _ui_widgets()
    assert "Dirs" in widgets["trainingFolderPathLineEdit"].find("property[@name='filters']/set").text
    output_filters = widgets["trainingOutputModelPathLineEdit"].find("property[@name='filters']/set").text
    assert "Files" in output_filters and "Writable" in output_filters  # ctkPathLineEdit then offers a save dialog
    assert _ui_property(widgets["trainingOutputModelPathLineEdit"], "nameFilters") == ["MedFusion model (*.pt)"]


def test_training_choices_match_the_logic():
    from MedFusionLib.engine.networks import NETWORKS

    assert choices.TRAINING_FAMILY_CHOICES == list(choices.TRAINING_FAMILIES)
    assert set(choices.TRAINING_FAMILY_CHOICES) == set(NETWORKS)
    assert choices.TRAINING_SOURCE_CHOICES == ["scene volumes", "folder"]
    sizes = choices.TRAINING_BLOCK_SIZE_CHOICES
    assert sizes[0] == "auto" and all(int(n) >= 2 and int(n) & (int(n) - 1) == 0 for n in sizes[1:])
    assert set(choices.DEFAULT_TRAINING_BLOCK_SIZES) == set(choices.TRAINING_FAMILIES)
    # The iterations default is the logic's, in the parameter node and in the .ui spin box alike.
    default = choices.DEFAULT_TRAINING_ITERATIONS
    field = _fields(_module_class("MedFusionParameterNode"))["trainingIterations"]
    assert _value(field.value) == default
    assert _ui_property(_ui_widgets()["trainingIterationsSpinBox"], "value") == str(default)


# ------------------------------------------------------------------------------------------ resources


def test_icon_is_a_128_pixel_png():
    data = ICON_FILE.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_requirements_match_the_module_and_pyproject():
    """requirements.txt + PyTorch (PyTorchUtils) + NumPy (shipped with Slicer) are exactly pyproject's dependencies."""
    lines = [ln.strip() for ln in REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines == dependencies.read_requirements() and dependencies.REQUIREMENTS_FILE == REQUIREMENTS_FILE
    assert dependencies.module_requirements() == [*lines, dependencies.TORCH_REQUIREMENT]
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    required = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert sorted(required) == sorted([*lines, dependencies.TORCH_REQUIREMENT, dependencies.NUMPY_REQUIREMENT])


# ------------------------------------------------------------------------------------------ CMake and json


def test_module_cmake_names_exactly_the_files_that_exist():
    sets = _cmake_sets(MODULE_DIR / "CMakeLists.txt")
    variables = {"MODULE_NAME": sets["MODULE_NAME"]}
    assert variables["MODULE_NAME"] == "MedFusion"
    scripts = _cmake_list(sets["MODULE_PYTHON_SCRIPTS"], variables)
    resources = _cmake_list(sets["MODULE_PYTHON_RESOURCES"], variables)
    on_disk_scripts = sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                             if "__pycache__" not in p.parts and "Resources" not in p.parts)
    on_disk_resources = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                               if p.is_file() and "__pycache__" not in p.parts
                               and SCREENSHOTS_DIR not in p.parents)
    assert sorted(scripts) == on_disk_scripts
    assert sorted(resources) == on_disk_resources
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s*SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}"
                     r"\s*RESOURCES \$\{MODULE_PYTHON_RESOURCES\}\s*WITH_GENERIC_TESTS\s*\)", text)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_top_level_cmake_follows_the_extension_template():
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    order = ["project(MedFusion)", "set(EXTENSION_HOMEPAGE", "set(EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)",
             "include(${Slicer_USE_FILE})", "add_subdirectory(MedFusion)", "${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(needle) for needle in order]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), dict(zip(order, positions))
    metadata = _extension_metadata()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert metadata.get(f"EXTENSION_{key}"), key
    assert metadata["EXTENSION_DEPENDS"] == "PyTorch"


def test_cmake_ships_the_same_medfusionlib_files_as_the_python_package():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    globbed = set(re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/(MedFusionLib/\S+)", text))
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
        "package-data"]["MedFusionLib"]
    assert globbed == {"MedFusionLib/*.py", *(f"MedFusionLib/{pattern}" for pattern in package_data)}


def test_extensions_index_entry_agrees_with_cmake():
    entry = json.loads((ROOT / "MedFusion.json").read_text(encoding="utf-8"))
    assert SCHEMA_REQUIRED <= set(entry) <= SCHEMA_PROPERTIES
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                        r"slicer-extension-catalog-entry-schema-v1\.0\.\d\.json#", entry["$schema"])
    metadata = _extension_metadata()
    assert entry["category"] == metadata["EXTENSION_CATEGORY"]
    depends = [] if metadata["EXTENSION_DEPENDS"] == "NA" else metadata["EXTENSION_DEPENDS"].split(";")
    assert entry["build_dependencies"] == depends
    repo = _github_repo(entry["scm_url"])
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        for url in metadata[key].split():
            assert _github_repo(url) == repo, (key, url)
    assert _raw_github_path(metadata["EXTENSION_ICONURL"]) == ICON_FILE


def test_screenshots_exist():
    """Every screenshot URL names a PNG in the repository, large enough to read in the Extensions Manager."""
    urls = _extension_metadata()["EXTENSION_SCREENSHOTURLS"].split()
    assert urls
    for url in urls:
        path = _raw_github_path(url)
        assert path.is_file(), url
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", url
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 600 and height >= 400, (url, width, height)


def test_ui_preview_script_says_it_is_not_a_screenshot():
    """The 'screenshot' is a preview of the .ui rendered by docs/render_slicer_ui_preview.py outside Slicer."""
    py_compile.compile(str(UI_PREVIEW_SCRIPT), doraise=True)
    source = UI_PREVIEW_SCRIPT.read_text(encoding="utf-8")
    assert "not a screenshot of a running 3D Slicer" in source  # the caption drawn into the picture
    assert "MedFusion/Resources/Screenshots/MedFusion-1.png" in source
    # Qt for Python is the script's own dependency, never the test suite's or the package's.
    for requirements in (REQUIREMENTS_FILE.read_text(encoding="utf-8"), (ROOT / "pyproject.toml").read_text(encoding="utf-8")):
        assert "PySide" not in requirements and "PyQt" not in requirements


_STUB_SLICER = textwrap.dedent("""
    # A stand-in for Slicer's build tree: just the variables and macros the extension's CMake
    # uses, with the same checks as Slicer's slicerMacroBuildScriptedModule (files must exist).
    set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
    set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
    set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Empty.cmake)
    set(Slicer_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
    set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR lib/Slicer-5.8/qt-scripted-modules)
""")
_STUB_USE = textwrap.dedent("""
    macro(slicerMacroBuildScriptedModule)
      cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
      if(MY_SLICER_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "Unknown keywords: ${MY_SLICER_UNPARSED_ARGUMENTS}")
      endif()
      foreach(_f ${MY_SLICER_SCRIPTS} ${MY_SLICER_RESOURCES})
        if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_f})
          message(FATAL_ERROR "slicerMacroBuildScriptedModule given nonexistent file '${_f}'")
        endif()
        get_filename_component(_d ${_f} DIRECTORY)
        install(FILES ${_f} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${_d})
      endforeach()
    endmacro()
    macro(slicer_add_python_unittest)
    endmacro()
""")


def test_cmake_configures_and_installs_against_a_stub_slicer(tmp_path):
    """Configure + install with a stand-in Slicer: the module and MedFusionLib land in the scripted-modules dir."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    stub = tmp_path / "Slicer"
    stub.mkdir()
    (stub / "SlicerConfig.cmake").write_text(_STUB_SLICER)
    (stub / "UseSlicer.cmake").write_text(_STUB_USE)
    (stub / "Empty.cmake").write_text("")
    build, prefix = tmp_path / "build", tmp_path / "install"
    run = dict(capture_output=True, text=True, timeout=120)
    configure = subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={stub}",
                                "-DBUILD_TESTING=ON"], **run)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run([cmake, "--build", str(build)], **run)
    assert built.returncode == 0, built.stdout + built.stderr
    installed = subprocess.run([cmake, "--install", str(build), "--prefix", str(prefix)], **run)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    modules = prefix / "lib/Slicer-5.8/qt-scripted-modules"
    for relative in ("MedFusion.py", "MedFusionSlicerLib/logic_core.py", "Resources/UI/MedFusion.ui",
                     "MedFusionLib/__init__.py", "MedFusionLib/fusion.py", "MedFusionLib/models/default_cnn.pt",
                     "MedFusionLib/metrics/evaluate.py", "MedFusionLib/data/examples/ct_volume.nii.gz"):
        assert (modules / relative).is_file(), relative
    assert not list(modules.rglob("__pycache__"))
    assert (build / "lib/Slicer-5.8/qt-scripted-modules/MedFusionLib/fusion.py").is_file()  # the build-tree copy

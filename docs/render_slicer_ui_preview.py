"""Render a preview of the MedFusion Slicer module's panel, with a real fusion of the bundled example beside it.

This is NOT a screenshot of 3D Slicer. It loads ``MedFusion/Resources/UI/MedFusion.ui`` with
Qt for Python (PySide6) outside Slicer, with every Slicer/CTK widget replaced by the Qt widget
it derives from (``qMRMLNodeComboBox`` -> ``QComboBox``, ``ctkPathLineEdit`` -> ``QLineEdit``,
``ctkCollapsibleButton`` -> ``QGroupBox``, ``qMRMLWidget`` -> ``QWidget``), fills the combo boxes
with the choices the module's parameter node gives them and the node selectors with example
node names, and grabs it into a PNG. Beside the panel it draws one slice of the bundled example
volumes (``MedFusionLib/data/examples``) and of their fusion by the module's own logic
(``MedFusionLogicCore.fuse`` on a real MRML scene from the ``slicer-core`` wheel), with the
metric values the logic wrote into its table. A caption in the picture says what it is.

Qt for Python is needed by this script only (not by MedFusionLib, the module or the tests)::

    pip install PySide6-Essentials slicer-core
    QT_QPA_PLATFORM=offscreen python docs/render_slicer_ui_preview.py

It writes ``MedFusion/Resources/Screenshots/MedFusion-1.png`` (the file ``EXTENSION_SCREENSHOTURLS``
in ``CMakeLists.txt`` points at); ``--output`` writes elsewhere.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UI_FILE = ROOT / "MedFusion" / "Resources" / "UI" / "MedFusion.ui"
MODULE_FILE = ROOT / "MedFusion" / "MedFusion.py"
DEFAULT_OUTPUT = ROOT / "MedFusion/Resources/Screenshots/MedFusion-1.png"

CAPTION = (
    "MedFusion module panel: a UI preview rendered from MedFusion.ui with Qt outside 3D Slicer "
    "(Slicer/CTK widgets drawn as their Qt base classes) -- not a screenshot of a running 3D Slicer."
)

#: Slicer/CTK class -> the Qt class it derives from, and the properties only the Slicer/CTK class has.
REPLACEMENTS: dict[str, tuple[str, set[str]]] = {
    "qMRMLWidget": ("QWidget", set()),
    "qMRMLNodeComboBox": ("QComboBox", {"nodeTypes", "showChildNodeTypes", "noneEnabled", "addEnabled",
                                        "removeEnabled", "renameEnabled", "noneDisplay"}),
    "ctkPathLineEdit": ("QLineEdit", {"nameFilters", "filters", "options"}),
    "ctkCollapsibleButton": ("QGroupBox", {"collapsed", "text"}),
}

#: What the node selectors and path fields show: the state after fusing the bundled example, with the
#: Train section set up to learn from a folder of cases (example names; nothing here was loaded in Slicer).
EXAMPLE_NODES = {
    "inputVolume1Selector": "ct_volume",
    "inputVolume2Selector": "mri_volume",
    "inputVolume3Selector": "None",
    "inputVolume4Selector": "None",
    "targetVolumeSelector": "None (no target)",
    "outputVolumeSelector": "ct_volume fused",
    "metricsTableSelector": "MedFusion metrics",
    "sliceTableSelector": "MedFusion metrics per slice",
    "plotChartSelector": "MedFusion metrics per slice",
    "trainingTargetVolumeSelector": "None",
}
EXAMPLE_PATHS = {
    "modelFilePathLineEdit": "",
    "trainingFolderPathLineEdit": "~/data/fusion_training_cases",
    "trainingOutputModelPathLineEdit": "~/models/ct_mri_cnn.pt",
}
EXAMPLE_CHOICES = {
    "input1.modality": "CT",
    "input2.modality": "MRI",
    "trainingSource": "folder",
}


# ------------------------------------------------------------------------------------------ the module's panel


def _parameter_choices() -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Parameter name -> its Choice list, and parameter name -> its default, from MedFusionParameterNode.

    The choice lists come from ``MedFusionSlicerLib.choices`` (importable without Slicer); the
    parameter class is read from MedFusion.py's source, with the members of each ``@parameterPack``
    (``FusionInput``) under their dotted names (``input1.modality``), as the .ui binds them.
    """
    sys.path.insert(0, str(MODULE_FILE.parent))
    import MedFusionSlicerLib.choices as constants

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def members(cls: ast.ClassDef, prefix: str) -> None:
        for node in cls.body:
            if not isinstance(node, ast.AnnAssign):
                continue
            name, annotation = prefix + node.target.id, ast.unparse(node.annotation)
            if annotation in classes:  # a parameter pack
                members(classes[annotation], name + ".")
                continue
            if "Choice(" in annotation:
                choices[name] = getattr(constants, annotation.split("Choice(")[1].split(")")[0])
            if node.value is not None:  # a literal, or a name from the choices module
                value = node.value
                defaults[name] = getattr(constants, value.id) if isinstance(value, ast.Name) else ast.literal_eval(value)

    choices, defaults = {}, {}
    members(classes["MedFusionParameterNode"], "")
    return choices, defaults


def _qt_ui_xml() -> tuple[bytes, set[str]]:
    """MedFusion.ui with the Slicer/CTK classes replaced by their Qt base classes (what QUiLoader can build),
    and the names of the collapsible sections that start collapsed."""
    root = ET.parse(UI_FILE).getroot()
    collapsed_sections = set()
    for widget in root.iter("widget"):
        replacement = REPLACEMENTS.get(widget.get("class"))
        if replacement is None:
            continue
        qt_class, dropped = replacement
        if widget.get("class") == "ctkCollapsibleButton":  # its text is the section title
            text = next(p for p in widget.findall("property") if p.get("name") == "text")[0].text
            title = ET.SubElement(widget, "property", name="title")
            ET.SubElement(title, "string").text = text
            collapsed = next((p for p in widget.findall("property") if p.get("name") == "collapsed"), None)
            if collapsed is not None and collapsed[0].text == "true":
                collapsed_sections.add(widget.get("name"))
        for prop in list(widget.findall("property")):
            if prop.get("name") in dropped:
                widget.remove(prop)
        widget.set("class", qt_class)
    for section in ("customwidgets", "connections"):  # Slicer's classes and the MRML scene signal
        element = root.find(section)
        if element is not None:
            root.remove(element)
    return ET.tostring(root, encoding="utf-8"), collapsed_sections


def build_panel(QtCore: Any, QtWidgets: Any, QUiLoader: Any, status: str) -> Any:
    """The module panel as Qt widgets, filled like the parameter node would fill it, in an example state."""
    xml, collapsed_in_slicer = _qt_ui_xml()
    buffer = QtCore.QBuffer()
    buffer.setData(QtCore.QByteArray(xml))
    buffer.open(QtCore.QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    if panel is None:
        raise RuntimeError(f"QUiLoader could not build {UI_FILE}")

    choices, defaults = _parameter_choices()
    for combo in panel.findChildren(QtWidgets.QComboBox):
        parameter = combo.property("SlicerParameterName")
        if parameter in choices:  # parameterNodeWrapper's QComboBox connector adds exactly these items
            combo.clear()
            combo.addItems([str(c) for c in choices[parameter]])
            combo.setCurrentText(str(EXAMPLE_CHOICES.get(parameter, defaults.get(parameter))))
        elif combo.objectName() in EXAMPLE_NODES:
            combo.clear()
            combo.addItem(EXAMPLE_NODES[combo.objectName()])
    for name, text in EXAMPLE_PATHS.items():
        edit = panel.findChild(QtWidgets.QLineEdit, name)
        edit.setText(text)
        edit.setPlaceholderText("...")
    panel.findChild(QtWidgets.QSpinBox, "trainingIterationsSpinBox").setValue(defaults["trainingIterations"])
    panel.findChild(QtWidgets.QCheckBox, "computeMetricsCheckBox").setChecked(True)

    # What MedFusionWidget._checkCanApply does in this state: the method is the default model, the
    # Train section learns from a folder.
    panel.findChild(QtWidgets.QLineEdit, "modelFilePathLineEdit").setEnabled(False)
    panel.findChild(QtWidgets.QComboBox, "trainingTargetVolumeSelector").setEnabled(False)
    for button in ("fuseButton", "trainButton"):
        panel.findChild(QtWidgets.QPushButton, button).setEnabled(True)
    for bar in ("progressBar", "trainProgressBar"):  # hidden between runs
        panel.findChild(QtWidgets.QProgressBar, bar).setVisible(False)
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText(status)

    # ctkCollapsibleButton: a header with an arrow; collapsed sections show only the header.
    # Pre-processing is shown collapsed, as it opens; Train is shown expanded, as after a click on it.
    for box in panel.findChildren(QtWidgets.QGroupBox):
        collapsed = box.objectName() in collapsed_in_slicer and box.objectName() != "trainCollapsibleButton"
        box.setTitle(("\u25b8 " if collapsed else "\u25be ") + box.title())
        if collapsed:
            box.setFlat(True)
            for child in box.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
                child.setVisible(False)
            box.setMaximumHeight(box.fontMetrics().height() + 14)
    return panel


# ------------------------------------------------------------------------------------------ the fused example


def fuse_example() -> dict[str, Any]:
    """Fuse the bundled CT/MRI volumes through the module's logic on a real MRML scene (slicer-core)."""
    sys.path.insert(0, str(ROOT / "MedFusion"))
    import slicer  # the slicer-core wheel

    from MedFusionLib.data.examples import example_path
    from MedFusionLib.fusion import to_unit_range
    from MedFusionLib.io import read_image
    from MedFusionSlicerLib import DEFAULT_PLOT_METRICS, MedFusionLogicCore, ijk_to_ras_from_geometry

    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    nodes, arrays = [], []
    for role in ("ct_volume", "mri_volume"):
        image = read_image(example_path(role))
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", role)
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras_from_geometry(image.spacing, image.origin,
                                                                                         image.direction)))
        slicer.util.updateVolumeFromArray(node, image.array)
        nodes.append(node)
        arrays.append(image.array)
    result = MedFusionLogicCore().fuse(nodes, method="default", modalities=["CT", "MRI"])
    fused = slicer.util.arrayFromVolume(result.outputVolumeNode)
    middle = fused.shape[0] // 2
    return {
        "slices": [to_unit_range(arrays[0], "CT")[middle], to_unit_range(arrays[1], "MRI")[middle], fused[middle]],
        "labels": ["input 1: ct_volume (CT)", "input 2: mri_volume (MRI)", "fused (default model)"],
        "slice": middle,
        "count": fused.shape[0],
        "metrics": result.metrics,
        "sliceMetrics": {key: result.sliceMetrics[key] for key in DEFAULT_PLOT_METRICS},
        "seconds": result.seconds,
        "method": result.methodName,
    }


def _pixmap(QtCore: Any, QtGui: Any, image: np.ndarray, size: int) -> Any:
    grey = np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))
    qimage = QtGui.QImage(grey.data, grey.shape[1], grey.shape[0], grey.strides[0], QtGui.QImage.Format_Grayscale8)
    # Square in-plane pixels (1 x 1 mm); smooth scaling, as a slice view interpolates.
    return QtGui.QPixmap.fromImage(qimage.copy()).scaled(size, size, QtCore.Qt.IgnoreAspectRatio,
                                                         QtCore.Qt.SmoothTransformation)


def _plot_pixmap(QtGui: Any, slice_metrics: dict[str, np.ndarray], width: int, height: int) -> Any:
    """The per-slice metrics against the slice index, as the module's plot chart shows them (drawn with matplotlib)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from MedFusionLib.metrics import METRICS

    figure, axes = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
    colours = [(0.0, 0.45, 0.70), (0.90, 0.62, 0.0), (0.0, 0.62, 0.45)]  # the logic's first plot colours
    for (key, values), colour in zip(slice_metrics.items(), colours):
        axes.plot(np.arange(len(values)), values, color=colour, label=METRICS[key].label)
    axes.set_title("MedFusion: fusion quality per slice", fontsize=10)
    axes.set_xlabel("slice index (along K)", fontsize=9)
    axes.set_ylabel("metric value", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    pixmap = QtGui.QPixmap()
    pixmap.loadFromData(buffer.getvalue(), "PNG")
    return pixmap


def build_results(QtCore: Any, QtGui: Any, QtWidgets: Any, example: dict[str, Any]) -> Any:
    from MedFusionLib.metrics import METRICS

    results = QtWidgets.QWidget()
    layout = QtWidgets.QVBoxLayout(results)
    heading = QtWidgets.QLabel(
        f"<b>The bundled example, fused by the module's logic</b> (MedFusionLogicCore on an MRML scene, "
        f"{example['method']}, {example['seconds']:.2f} s): axial slice {example['slice']} of {example['count']}"
    )
    heading.setWordWrap(True)
    layout.addWidget(heading)
    images = QtWidgets.QGridLayout()
    for column, (image, label) in enumerate(zip(example["slices"], example["labels"])):
        view = QtWidgets.QLabel()
        view.setPixmap(_pixmap(QtCore, QtGui, image, 240))
        images.addWidget(view, 0, column)
        caption = QtWidgets.QLabel(label)
        caption.setAlignment(QtCore.Qt.AlignCenter)
        images.addWidget(caption, 1, column)
    layout.addLayout(images)
    rows = [key for key in ("QABF", "MI", "SSIM_S", "EN", "SF") if key in example["metrics"]]
    table = QtWidgets.QTableWidget(len(rows), 3)
    table.setHorizontalHeaderLabels(["metric", "value", "definition"])
    for row, key in enumerate(rows):
        for column, text in enumerate((METRICS[key].label, f"{example['metrics'][key]:.3f}", METRICS[key].definition)):
            table.setItem(row, column, QtWidgets.QTableWidgetItem(text))
    table.verticalHeader().setVisible(False)
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
    table.horizontalHeader().setStretchLastSection(True)
    table.resizeColumnsToContents()
    header = table.horizontalHeader().sizeHint().height()
    table.setFixedHeight(header + len(rows) * table.verticalHeader().defaultSectionSize() + 2 * table.frameWidth())
    layout.addWidget(QtWidgets.QLabel("Part of the metrics table the logic wrote (volume values: mean over slices; "
                                      "all higher is better):"))
    layout.addWidget(table)
    plot = QtWidgets.QLabel()
    plot.setPixmap(_plot_pixmap(QtGui, example["sliceMetrics"], 720, 300))
    layout.addWidget(QtWidgets.QLabel("The per-slice table's plotted metrics (in Slicer: the module's plot chart; "
                                      "drawn here with matplotlib from the same numbers):"))
    layout.addWidget(plot)
    layout.addStretch(1)
    return results


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"PNG to write (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no display needed
    from PySide6 import QtCore, QtGui, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    app.setStyle("Fusion")
    font = app.font()
    font.setPointSize(9)
    app.setFont(font)

    example = fuse_example()
    window = QtWidgets.QWidget()
    window.setStyleSheet("QWidget { background: #f4f4f4; } QTableWidget, QLineEdit, QComboBox { background: white; }")
    outer = QtWidgets.QVBoxLayout(window)
    caption = QtWidgets.QLabel(CAPTION)
    caption.setWordWrap(True)
    caption.setStyleSheet("QLabel { background: #fff3cd; border: 1px solid #d6b656; padding: 6px; }")
    outer.addWidget(caption)
    row = QtWidgets.QHBoxLayout()
    panel = build_panel(QtCore, QtWidgets, QUiLoader,
                        f"Fused with {example['method']} in {example['seconds']:.1f} s.")
    panel.setFixedWidth(430)
    row.addWidget(panel, 0, QtCore.Qt.AlignTop)
    row.addWidget(build_results(QtCore, QtGui, QtWidgets, example), 1)
    outer.addLayout(row)
    window.resize(1200, 10)
    window.adjustSize()
    window.resize(1200, window.sizeHint().height())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(args.output), "PNG"):
        raise RuntimeError(f"could not write {args.output}")
    print(f"wrote {args.output} ({window.width()} x {window.height()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

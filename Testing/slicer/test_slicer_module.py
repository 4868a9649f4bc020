"""Static checks of the Slicer extension against the real Slicer API (no Slicer needed).

Slicer cannot run here, so the module is checked the way a reviewer would: every
``slicer.util`` call and import against ``slicer-api.json`` (names, keywords, argument
counts), every method called on an MRML node against that class and its bases, the .ui
against Designer's XML and the code, the CMake lists against the files on disk and the
macros' keywords, and the ExtensionsIndex entry against the catalog schema.

Convention the MRML check relies on: in the module, a variable or attribute holding a node
is annotated with its class (``mriNode: "vtkMRMLScalarVolumeNode"``), once per name. Any
VTK-style (capitalised) method called on something that is not an imported module must
resolve through those annotations, so an unannotated receiver fails the test.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AmyloidKD"
MODULE_PY = MODULE_DIR / "AmyloidKD.py"
BATCH_PY = MODULE_DIR / "Scripts" / "AmyloidKDBatch.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "AmyloidKD.ui"
SCENE_PY = MODULE_DIR / "AmyloidKDModuleLib" / "scene.py"
SLICER_SOURCES = (MODULE_PY, BATCH_PY)
#: Minimum number of MRML method calls checked per file (so a broken parser cannot pass silently).
MRML_CALLS_CHECKED = {MODULE_PY: 5, BATCH_PY: 0, SCENE_PY: 40}

# The current ExtensionsIndex catalog-entry schema (Slicer/Slicer, Schemas/, v1.0.2: the
# newest, which adds dicom_support_rule and the 1..5 tier range to v1.0.1).
CATALOG_SCHEMA = {
    "$id": "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"}, "category": {"type": "string"}, "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"}, "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "dicom_support_rule": {"type": "string"}, "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"}, "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}
# Categories ExtensionsIndex's check_description_files.py accepts (subset that fits us).
ACCEPTED_CATEGORIES = {"Neuroimaging", "Nuclear Medicine", "Quantification", "Segmentation", "Analysis"}

# Widgets outside slicer-api.json's scope: Qt's own and the CTK ones we use (separate repo).
QT_WIDGETS = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QCheckBox", "QProgressBar", "QSpinBox",
              "QDoubleSpinBox", "QLineEdit", "QGroupBox", "QTextEdit", "QPlainTextEdit", "QRadioButton"}
CTK_WIDGETS = {"ctkCollapsibleButton", "ctkPathLineEdit", "ctkSliderWidget"}
# VTK classes outside slicer-api.json that the scene layer calls (VTK's own API, vtkAbstractArray.h).
VTK_CLASSES = {"vtkAbstractArray": {"SetName", "GetName", "GetNumberOfTuples"},
               # Slicer's segmentation core (Libs/Segmentation: vtkSegmentation.h, vtkSegment.h)
               "vtkSegmentation": {"GetNumberOfSegments", "GetNthSegment", "GetNthSegmentID"},
               "vtkSegment": {"GetName", "SetName", "GetLabelValue", "SetColor", "GetColor", "SetTag"}}
QWIDGET_PROPERTIES = {"toolTip", "enabled", "geometry", "visible", "sizePolicy", "minimumSize", "maximumSize",
                      "whatsThis", "statusTip"}


# --- the API reference --------------------------------------------------------------------


def _api_path() -> Path:
    candidates = [Path(os.environ["AMYLOIDKD_SLICER_API"])] if "AMYLOIDKD_SLICER_API" in os.environ else []
    candidates += [REPO.parent / "shared" / "slicer-api" / "slicer-api.json"]
    for path in candidates:
        if path.is_file():
            return path
    message = ("slicer-api.json not found; set AMYLOIDKD_SLICER_API to its path "
               f"(looked in {', '.join(map(str, candidates))})")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@lru_cache(maxsize=1)
def api() -> dict:
    """slicer-api.json (Slicer 5.x names and signatures)."""
    return json.loads(_api_path().read_text())


@lru_cache(maxsize=None)
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain of names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def mrml_methods(cls: str) -> set[str]:
    """Methods of an MRML class and all its bases (MRML, then vtkObject/vtkObjectBase)."""
    data, methods, current = api(), set(), cls
    while current in data["mrml_classes"]:
        methods |= set(data["mrml_classes"][current]["methods"])
        current = data["mrml_classes"][current]["base"]
    assert current in data["vtk_base_classes"], f"{cls}'s base chain leaves the API file at {current}"
    while current in data["vtk_base_classes"]:
        methods |= set(data["vtk_base_classes"][current]["methods"])
        current = data["vtk_base_classes"][current].get("base")
    return methods


def mrml_arg_ranges(cls: str, method: str) -> list[tuple[int, int | None]]:
    data, ranges, current = api(), [], cls
    while current in data["mrml_classes"]:
        for overload in data["mrml_classes"][current]["method_details"].get(method, []):
            ranges.append((overload["min_args"], overload["max_args"]))
        current = data["mrml_classes"][current]["base"]
    return ranges


def string_annotation(annotation: ast.AST | None) -> str | None:
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        return annotation.value
    if isinstance(annotation, ast.Name):
        return annotation.id
    return None


def node_annotations(tree: ast.Module) -> dict[str, set[str]]:
    """Name -> MRML classes it is annotated with (parameters, annotated assignments, fields)."""
    found: dict[str, set[str]] = {}
    mrml = api()["mrml_class_index"]

    def note(name: str, annotation: ast.AST | None) -> None:
        value = string_annotation(annotation)
        if value in mrml or value in VTK_CLASSES:
            found.setdefault(name, set()).add(value)

    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            note(node.arg, node.annotation)
        elif isinstance(node, ast.AnnAssign):
            target = node.target
            name = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
            if name:
                note(name, node.annotation)
    return found


def imported_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


# --- module structure ---------------------------------------------------------------------


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def test_module_follows_the_scripted_module_template():
    defined = classes(parsed(MODULE_PY))
    template = {d["name"].replace("TemplateKey", "AmyloidKD"): d
                for d in api()["module_template"]["definitions"] if d["kind"] == "class"}
    for name, definition in template.items():
        assert name in defined, f"template class {name} missing"
        bases = [dotted(b) for b in defined[name].bases]
        assert bases == definition["bases"], f"{name} bases {bases} != template {definition['bases']}"
        methods = {f.name for f in defined[name].body if isinstance(f, ast.FunctionDef)}
        expected = set(definition["methods"]) - {"__init__"} if name == "AmyloidKDLogic" else set(definition["methods"])
        if name == "AmyloidKDTest":
            expected -= {"test_TemplateKey1"}
            assert any(m.startswith("test_") for m in methods)
        assert expected <= methods, f"{name} lacks template methods {sorted(expected - methods)}"
        decorators = [dotted(d) for d in defined[name].decorator_list]
        assert decorators == definition.get("decorators", []), f"{name} decorators {decorators}"


def test_logic_process_has_the_documented_signature():
    logic = classes(parsed(MODULE_PY))["AmyloidKDLogic"]
    process = next(f for f in logic.body if isinstance(f, ast.FunctionDef) and f.name == "process")
    params = [a.arg for a in process.args.args]
    assert params[:6] == ["self", "mriNode", "petNode", "checkpoint", "device", "skullStrip"]
    defaults = dict(zip(params[-len(process.args.defaults):], process.args.defaults))
    assert ast.literal_eval(defaults["petNode"]) is None
    assert ast.literal_eval(defaults["device"]) == "auto"
    assert ast.get_docstring(process)


def test_module_stays_thin():
    """The module computes nothing itself: no AmyloidKDLib import, no numpy/torch maths."""
    tree = parsed(MODULE_PY)
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert not top & {"AmyloidKDLib", "torch", "numpy", "nibabel", "scipy"}, top
    for path in (MODULE_DIR / "AmyloidKDModuleLib").glob("*.py"):
        imported = {a.split(".")[0] for a in _all_imports(parsed(path))}
        assert not imported & {"slicer", "qt", "vtk", "ctk"}, f"{path.name} imports Slicer: {imported}"


def _all_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


# --- calls into Slicer's Python API -------------------------------------------------------


@pytest.mark.parametrize("source", SLICER_SOURCES, ids=lambda p: p.name)
def test_every_slicer_util_call_exists_with_its_keywords(source):
    util = api()["python_modules"]["slicer.util"]
    checked = 0
    for call in (n for n in ast.walk(parsed(source)) if isinstance(n, ast.Call)):
        name = dotted(call.func)
        if not name or not name.startswith("slicer.util."):
            continue
        function = name.rsplit(".", 1)[1]
        entry = util.get(function)
        assert entry and not function.startswith("__"), f"{name} (line {call.lineno}) is not in Slicer {api()['source']['tag']}"
        params = entry["params"]
        names = {p["name"] for p in params if p["kind"] in ("positional_or_keyword", "keyword_only")}
        var_kw = any(p["kind"] == "var_keyword" for p in params)
        for keyword in call.keywords:
            assert keyword.arg is not None and (keyword.arg in names or var_kw), \
                f"{name}(... {keyword.arg}=...) line {call.lineno}: parameters are {entry['signature']}"
        positional = [p for p in params if p["kind"] in ("positional_only", "positional_or_keyword")]
        if not any(p["kind"] == "var_positional" for p in params):
            assert len(call.args) <= len(positional), f"{name} line {call.lineno}: too many positional arguments"
        required = [p["name"] for p in positional if "default" not in p]
        given = {p["name"] for p in positional[:len(call.args)]} | {k.arg for k in call.keywords}
        assert set(required) <= given, f"{name} line {call.lineno}: missing {set(required) - given}"
        checked += 1
    assert checked >= (10 if source == MODULE_PY else 4)


@pytest.mark.parametrize("source", SLICER_SOURCES, ids=lambda p: p.name)
def test_imports_from_slicer_exist(source):
    modules = api()["python_modules"]
    for node in ast.walk(parsed(source)):
        if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("slicer"):
            continue
        for alias in node.names:
            if node.module == "slicer":
                assert alias.name in api()["mrml_class_index"], f"slicer.{alias.name} is not an MRML class"
            else:
                assert node.module in modules, f"module {node.module} not in the API file"
                assert alias.name in modules[node.module], f"{node.module}.{alias.name} does not exist"


@pytest.mark.parametrize("source", (*SLICER_SOURCES, SCENE_PY), ids=lambda p: p.name)
def test_methods_called_on_mrml_nodes_exist_on_their_class(source):
    """The scene layer runs on slicer-core 5.11 in the tests; this checks it against the Slicer
    release in the API file too (the Volumes module's logic is not an MRML class: skipped)."""
    tree = parsed(source)
    annotations = node_annotations(tree)
    ambiguous = {n: c for n, c in annotations.items() if len(c) > 1}
    assert not ambiguous, f"a name is annotated with several MRML classes: {ambiguous}"
    known = {n: next(iter(c)) for n, c in annotations.items()}
    modules = imported_names(tree) | {"self"}
    checked = 0
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        if not isinstance(call.func, ast.Attribute) or not call.func.attr[:1].isupper():
            continue
        receiver = call.func.value
        receiver_name = dotted(receiver)
        if receiver_name == "slicer.mrmlScene":
            cls = "vtkMRMLScene"
        elif isinstance(receiver, ast.Name) and (receiver.id in modules or receiver.id == "volumes_logic"):
            continue  # a class or function of an imported module (qt.QTimer, ...), or vtkSlicerVolumesLogic
        else:
            last = receiver.id if isinstance(receiver, ast.Name) else getattr(receiver, "attr", None)
            assert last in known, (f"line {call.lineno}: {ast.unparse(call.func)}() is called on "
                                   f"{ast.unparse(receiver)}, which has no MRML class annotation")
            cls = known[last]
        method = call.func.attr
        if cls in VTK_CLASSES:
            assert method in VTK_CLASSES[cls], f"line {call.lineno}: {cls}.{method} is not a known VTK method"
            continue
        assert method in mrml_methods(cls), f"line {call.lineno}: {cls} has no method {method}"
        ranges = mrml_arg_ranges(cls, method)
        if ranges:
            count = len(call.args)
            assert any(lo <= count and (hi is None or count <= hi) for lo, hi in ranges), \
                f"line {call.lineno}: {cls}.{method} takes {ranges} arguments, got {count}"
        checked += 1
    assert checked >= MRML_CALLS_CHECKED[source]


def test_scene_events_and_class_names_exist():
    tree = parsed(MODULE_PY)
    scene = api()["mrml_classes"]["vtkMRMLScene"]["enums"]
    events = {e for values in scene.values() for e in values}
    for node in ast.walk(tree):
        name = dotted(node) if isinstance(node, ast.Attribute) else None
        if name and name.startswith("slicer.mrmlScene.") and name.count(".") == 2 and name[17:18].isupper():
            attribute = name.rsplit(".", 1)[1]
            if isinstance(getattr(node, "ctx", None), ast.Load) and attribute.endswith("Event"):
                assert attribute in events, f"vtkMRMLScene has no event {attribute}"
    class_strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and re.fullmatch(r"vtkMRML[A-Za-z]+Node", n.value)]
    assert class_strings and all(c in api()["mrml_class_index"] for c in class_strings), class_strings


def test_saliency_colour_node_is_one_slicer_creates():
    match = re.search(r'saliencyColorNodeID: str = "vtkMRMLColorTableNode(\w+)"', SCENE_PY.read_text())
    assert match, "OverlaySettings.saliencyColorNodeID not found"
    assert f"SetTypeTo{match.group(1)}" in api()["mrml_classes"]["vtkMRMLColorTableNode"]["methods"]


def test_parameter_node_wrapper_members_used_exist():
    tree = parsed(MODULE_PY)
    wrapper = classes(tree)["AmyloidKDParameterNode"]
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    members = set(api()["python_modules"]["slicer.parameterNodeWrapper"]["__wrapped_class_members__"])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and dotted(node.value) in ("self._parameterNode", "parameters"):
            assert node.attr in fields | members, f"line {node.lineno}: parameter node has no {node.attr}"


def _class_methods_from_api(base: str) -> set[str]:
    modules = api()["python_modules"]
    for module in ("slicer.ScriptedLoadableModule", "slicer.util"):
        if base in modules[module]:
            entry = modules[module][base]
            return set(entry["methods"]) | set(entry.get("instance_attributes", []))
    return set()


def test_self_calls_resolve_to_own_or_inherited_methods():
    import unittest

    tree = parsed(MODULE_PY)
    for cls in classes(tree).values():
        own = {f.name for f in cls.body if isinstance(f, ast.FunctionDef)}
        own |= {t.attr for n in ast.walk(cls) if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Attribute) and dotted(t.value) == "self"}
        inherited: set[str] = set()
        for base in (dotted(b) for b in cls.bases):
            inherited |= _class_methods_from_api(base)
            if base == "ScriptedLoadableModuleTest":
                inherited |= set(dir(unittest.TestCase))
        for node in ast.walk(cls):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and dotted(node.func.value) == "self":
                assert node.func.attr in own | inherited, f"{cls.name}: self.{node.func.attr}() is not defined"
        for node in ast.walk(cls):  # explicit base calls: ScriptedLoadableModuleWidget.setup(self)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                base_methods = _class_methods_from_api(node.func.value.id)
                if base_methods:
                    assert node.func.attr in base_methods, f"{node.func.value.id}.{node.func.attr} does not exist"


# --- the .ui file -------------------------------------------------------------------------


def ui_tree() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ui_tree().iter("widget")}


def qmrml_properties(cls: str) -> set[str]:
    widgets, props = api()["qt_designer_widgets"]["widgets"], set()
    while cls in widgets:
        props |= set(widgets[cls]["properties"])
        cls = widgets[cls]["base"]
    return props


def test_ui_is_designer_xml_with_known_widget_classes():
    root = ui_tree()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and root.findtext("class") == top.get("name") == "AmyloidKD"
    known = set(api()["qt_designer_widgets"]["designer_widget_names"]) | QT_WIDGETS | CTK_WIDGETS
    used = {w.get("class") for w in root.iter("widget")}
    assert used <= known, f"unknown widget classes {used - known}"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    assert custom == used - QT_WIDGETS, "every non-Qt widget class must be declared as a custom widget"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"


def test_ui_properties_and_node_types_exist():
    mrml = api()["mrml_class_index"]
    for widget in ui_tree().iter("widget"):
        cls = widget.get("class")
        if not cls.startswith("qMRML"):
            continue
        allowed = qmrml_properties(cls) | QWIDGET_PROPERTIES
        for prop in widget.findall("property"):
            if prop.get("stdset") == "0":
                assert prop.get("name") == "SlicerParameterName"
                continue
            assert prop.get("name") in allowed, f"{widget.get('name')}: {cls} has no property {prop.get('name')}"
            if prop.get("name") == "nodeTypes":
                types = [s.text for s in prop.iter("string")]
                assert types and all(t in mrml for t in types), types


def test_ui_connections_use_real_signals_and_slots():
    widgets = api()["qt_designer_widgets"]["widgets"]
    by_name = ui_widgets()
    connections = list(ui_tree().iter("connection"))
    assert len(connections) == sum(1 for w in by_name.values() if w.get("class") == "qMRMLNodeComboBox")
    for connection in connections:
        sender = by_name[connection.findtext("sender")].get("class")
        receiver = by_name[connection.findtext("receiver")].get("class")
        assert connection.findtext("signal").split("(")[0] in widgets[sender]["signals"]
        assert connection.findtext("slot").split("(")[0] in widgets[receiver]["slots"]


def test_ui_widgets_match_the_code_and_the_parameter_node():
    names = set(ui_widgets())
    tree = parsed(MODULE_PY)
    referenced = {node.attr for node in ast.walk(tree)
                  if isinstance(node, ast.Attribute) and dotted(node.value) == "self.ui"}
    assert referenced and referenced <= names, f"code uses widgets missing from the .ui: {referenced - names}"
    wrapper = classes(tree)["AmyloidKDParameterNode"]
    fields = {n.target.id for n in wrapper.body if isinstance(n, ast.AnnAssign)}
    bound = [p.findtext("string") for p in ui_tree().iter("property") if p.get("name") == "SlicerParameterName"]
    assert sorted(bound) == sorted(fields), "each parameter needs exactly one widget (SlicerParameterName)"


# --- CMake --------------------------------------------------------------------------------


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(command name lower-cased, arguments) for each command, with ${VAR} from set() expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text())
    variables: dict[str, list[str]] = {"CMAKE_CURRENT_SOURCE_DIR": [str(path.parent)]}
    commands = []
    for name, body in re.findall(r"(\w+)\s*\(([^()]*)\)", text):
        args = []
        for token in re.findall(r'"[^"]*"|[^\s"]+', body):
            token = token.strip('"')
            expanded = re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), token)
            args.extend(expanded.split(" ") if "${" in token and " " in expanded else [expanded])
        if name.lower() == "set" and args:
            variables[args[0]] = args[1:]
        commands.append((name.lower(), args))
    return commands


def keyword_groups(args: list[str], keywords: list[str]) -> dict[str, list[str]]:
    groups, current = {}, None
    for arg in args:
        if arg in keywords:
            current = arg
            groups[current] = []
        else:
            assert current is not None, f"argument {arg} before any keyword"
            groups[current].append(arg)
    return groups


def test_module_cmake_lists_every_file_and_only_real_ones():
    macro = api()["cmake_macros"]["slicerMacroBuildScriptedModule"]
    calls = [a for n, a in cmake_commands(MODULE_DIR / "CMakeLists.txt") if n == "slicermacrobuildscriptedmodule"]
    assert len(calls) == 1
    groups = keyword_groups(calls[0], macro["all_keywords"])
    assert set(macro["required_keywords"]) <= set(groups)
    assert groups["NAME"] == ["AmyloidKD"]
    listed = groups.get("SCRIPTS", []) + groups.get("RESOURCES", [])
    for entry in listed:
        assert (MODULE_DIR / entry).is_file(), f"CMake lists {entry}, which does not exist"
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.name != "CMakeLists.txt"}
    assert set(listed) == on_disk, f"not listed in CMake: {sorted(on_disk - set(listed))}"
    assert all(s.endswith(".py") for s in groups["SCRIPTS"])
    assert "Resources/UI/AmyloidKD.ui" in groups["RESOURCES"] and "Resources/Icons/AmyloidKD.png" in groups["RESOURCES"]


def test_self_test_is_not_a_ctest_and_installs_nothing():
    """Extension build machines have no PyTorch and must not download: the heavy self-test is
    not registered with CTest (WITH_GENERIC_TESTS still loads the module), and the self-test
    itself never calls the installer."""
    commands = cmake_commands(MODULE_DIR / "CMakeLists.txt")
    assert not [a for n, a in commands if n == "slicer_add_python_unittest"]
    build = [a for n, a in commands if n == "slicermacrobuildscriptedmodule"]
    assert build and "WITH_GENERIC_TESTS" in build[0]
    test_class = classes(parsed(MODULE_PY))["AmyloidKDTest"]
    called = {dotted(n.func) or "" for n in ast.walk(test_class) if isinstance(n, ast.Call)}
    called_names = {c.rsplit(".", 1)[-1] for c in called}
    assert not called_names & {"setupPythonRequirements", "pip_install", "installTorch", "install_missing",
                               "downloadFile", "downloadAndExtractArchive"}, called_names
    assert "missing_requirements" in called_names  # it checks, says what is missing, and stops


def _glob_matches(relative: str, pattern: str, recursive: bool) -> bool:
    if recursive:
        return fnmatch.fnmatch(Path(relative).name, pattern) if "/" not in pattern else fnmatch.fnmatch(relative, pattern)
    return fnmatch.fnmatch(relative, pattern) and relative.count("/") == pattern.count("/")


def test_library_cmake_globs_cover_the_whole_package():
    commands = cmake_commands(REPO / "AmyloidKDLib" / "CMakeLists.txt")
    globs = {}
    for name, args in commands:
        if name == "file" and args[0] in ("GLOB", "GLOB_RECURSE"):
            patterns = [a for a in args[2:] if a not in ("RELATIVE", "CONFIGURE_DEPENDS")
                        and not a.startswith(str(REPO))]
            globs[args[1]] = (args[0] == "GLOB_RECURSE", patterns)
    build = next(a for n, a in commands if n == "slicermacrobuildscriptedmodule")
    groups = keyword_groups(build, api()["cmake_macros"]["slicerMacroBuildScriptedModule"]["all_keywords"])
    assert groups["NAME"] == ["AmyloidKDLib"] and "WITH_SUBDIR" in groups
    library = REPO / "AmyloidKDLib"
    package_files = {p.relative_to(library).as_posix() for p in library.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc" and p.name != "CMakeLists.txt"}

    def covered(keyword: str) -> set[str]:
        matched = set()
        for variable in groups.get(keyword, []):
            name = variable.strip("${}")
            recursive, patterns = globs[name]
            matched |= {f for f in package_files if any(_glob_matches(f, p, recursive) for p in patterns)}
        return matched

    scripts, resources = covered("SCRIPTS"), covered("RESOURCES")
    assert {f for f in package_files if f.endswith(".py")} == scripts
    assert package_files - scripts == resources, f"not packaged for Slicer: {sorted(package_files - scripts - resources)}"
    assert "__init__.py" in scripts and "__main__.py" in scripts and "cli.py" in scripts


def test_top_level_cmake_is_a_slicer_extension():
    commands = cmake_commands(REPO / "CMakeLists.txt")
    assert ("project", ["AmyloidKD"]) in commands
    metadata = api()["cmake_macros"]["__extension_variables__"]["metadata"]
    settings = {a[0]: " ".join(a[1:]) for n, a in commands if n == "set" and a and a[0].startswith("EXTENSION_")}
    assert set(settings) <= set(metadata), f"unknown EXTENSION_ variables {set(settings) - set(metadata)}"
    assert settings["EXTENSION_CATEGORY"] == "Neuroimaging" and settings["EXTENSION_DEPENDS"] == "PyTorch"
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DESCRIPTION",
                "EXTENSION_CONTRIBUTORS"):
        assert settings.get(key), f"{key} must be set"
    assert settings["EXTENSION_ICONURL"].endswith("/AmyloidKD/Resources/Icons/AmyloidKD.png")
    screenshot = settings["EXTENSION_SCREENSHOTURLS"].split("/main/", 1)[1]
    assert (REPO / screenshot).is_file(), f"screenshot {screenshot} is not in the repository"
    subdirectories = [a[0] for n, a in commands if n == "add_subdirectory"]
    assert subdirectories == ["AmyloidKDLib", "AmyloidKD"]
    assert all((REPO / d / "CMakeLists.txt").is_file() for d in subdirectories)
    called = [n for n, _ in commands]
    assert called.index("find_package") < called.index("add_subdirectory")


def test_icon_is_a_128_pixel_png():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "AmyloidKD.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
        assert len(set(icon.convert("L").getdata())) > 16, "the icon should be a picture, not a flat colour"


# --- ExtensionsIndex catalog entry --------------------------------------------------------


def test_catalog_entry_has_exactly_the_schemas_fields():
    entry = json.loads((REPO / "AmyloidKD.json").read_text())
    properties = CATALOG_SCHEMA["properties"]
    assert set(entry) <= set(properties), f"fields the schema does not allow: {set(entry) - set(properties)}"
    assert set(CATALOG_SCHEMA["required"]) <= set(entry)
    assert entry["$schema"] == CATALOG_SCHEMA["$id"]
    python_types = {"string": str, "boolean": bool, "integer": int, "array": list}
    for key, value in entry.items():
        spec = properties[key]
        assert isinstance(value, python_types[spec["type"]]), f"{key} must be a {spec['type']}"
        if "enum" in spec:
            assert value in spec["enum"]
        if spec["type"] == "integer":
            assert spec["minimum"] <= value <= spec["maximum"]
        if spec["type"] == "array":
            assert all(isinstance(v, str) for v in value)


def test_catalog_entry_agrees_with_the_cmake_metadata():
    entry = json.loads((REPO / "AmyloidKD.json").read_text())
    settings = {a[0]: a[1:] for n, a in cmake_commands(REPO / "CMakeLists.txt") if n == "set" and a}
    assert entry["category"] == " ".join(settings["EXTENSION_CATEGORY"]) and entry["category"] in ACCEPTED_CATEGORIES
    assert entry["build_dependencies"] == settings["EXTENSION_DEPENDS"]
    assert entry["scm_url"].startswith("https://") and entry["scm_url"].endswith(".git")
    repository = entry["scm_url"].rsplit("/", 1)[1][: -len(".git")]
    assert "slicer" in repository.lower(), "ExtensionsIndex wants the repository named Slicer<Name>"
    assert repository in settings["EXTENSION_ICONURL"][0] and repository in settings["EXTENSION_HOMEPAGE"][0]


# --- the panel's failure paths ------------------------------------------------------------


def _method(cls: str, name: str) -> ast.FunctionDef:
    return next(f for f in classes(parsed(MODULE_PY))[cls].body if isinstance(f, ast.FunctionDef) and f.name == name)


def test_panel_never_relies_on_try_with_error_display():
    """``slicer.util.tryWithErrorDisplay`` shows the error and re-raises: code after it never runs."""
    calls = {dotted(n.func) for n in ast.walk(parsed(MODULE_PY)) if isinstance(n, ast.Call)}
    assert "slicer.util.tryWithErrorDisplay" not in calls


@pytest.mark.parametrize("slot", ["onApplyButton", "onProcessTimer", "onCancelButton", "onUseModelButton",
                                  "onQuantifyPetButton"])
def test_every_button_and_timer_path_refreshes_the_buttons_in_a_finally(slot):
    """Whatever happens in the slot (failure, cancel, exception), Apply/Cancel are refreshed."""
    method = _method("AmyloidKDWidget", slot)
    finals = [n for n in ast.walk(method) if isinstance(n, ast.Try) and n.finalbody]
    refreshed = [f for f in finals if any(isinstance(c, ast.Call) and dotted(c.func) == "self._checkCanApply"
                                          for s in f.finalbody for c in ast.walk(s))]
    assert refreshed, f"{slot} does not call self._checkCanApply() in a finally block"


def test_apply_reports_installation_failures_in_the_panel():
    """A refused or failed installation becomes a 'Failed: ...' status, not an escaping exception."""
    method = _method("AmyloidKDWidget", "onApplyButton")
    handlers = [h for n in ast.walk(method) if isinstance(n, ast.Try) for h in n.handlers]
    assert any(dotted(h.type) == "Exception" for h in handlers)
    calls = {dotted(n.func) for n in ast.walk(method) if isinstance(n, ast.Call)}
    assert {"self.logic.planInstall", "self.logic.startInstall"} <= calls, "Apply no longer installs what is missing"
    assert "slicer.util.pip_install" not in calls  # it would block the GUI (and re-enter through processEvents)


def test_hd_bet_v2_is_described_as_never_downloading():
    """The library refuses to download HD-BET v2's parameters; the panel and the docs say so."""
    tooltip = next(w for w in ET.parse(UI_FILE).iter("widget") if w.get("name") == "skullStripComboBox")
    text = "".join(tooltip.itertext())
    assert "download" in text and "never downloads" in text and "place" in text
    docs = (REPO / "docs" / "slicer.md").read_text()
    assert "downloads its weights" not in docs and "downloads its weights" not in text
    assert "never downloads" in docs

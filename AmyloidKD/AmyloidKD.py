"""AmyloidKD: amyloid-beta positivity from a structural MRI, with a saliency overlay, in 3D Slicer.

A thin scripted module (Slicer's template: module, widget, logic, test). Everything that
computes runs in ``AmyloidKDLib``'s prediction command line, started by the logic in a
background process so Slicer stays responsive; this file converts nodes to files and back,
shows progress, and displays the result.
"""

import importlib
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
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

from AmyloidKDModuleLib.dependencies import (
    SKULL_STRIP_REQUIREMENTS,
    TORCH_MINIMUM_VERSION,
    TORCH_VERSION_REQUIREMENT,
    constraints_text,
    installed_distributions,
    missing_requirements,
    pip_install_arguments,
    read_requirements,
    satisfies_minimum,
)
from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.runner import (
    DEVICE_CHOICES,
    SKULL_STRIP_CHOICES,
    BackgroundProcess,
    CaseResult,
    PredictRequest,
    ProcessEvent,
    build_predict_command,
    describe_exit,
    library_environment,
    library_parent_directory,
    read_results,
    resolve_checkpoint,
)

MODULE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
CHECKPOINT_SETTINGS_KEY = "AmyloidKD/checkpoint"


@dataclass
class OverlaySettings:
    """How results are shown: saliency as a coloured foreground, top regions as a label layer."""

    saliencyColorNodeID: str = "vtkMRMLColorTableNodeIron"  # procedural hot scale Slicer always creates
    foregroundOpacity: float = 0.5
    labelOpacity: float = 0.5
    saliencyLowerThreshold: float = 0.2  # saliency below this is transparent, so the MRI shows


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


#
# AmyloidKDParameterNode
#


@parameterNodeWrapper
class AmyloidKDParameterNode:
    """The module's state, saved with the scene.

    mriVolume - the T1-weighted MRI to classify.
    petVolume - optional amyloid PET of the same subject, registered to the MRI; shown for
        comparison only (the student model needs no PET).
    checkpoint - student checkpoint folder, or its checkpoint.json.
    device - "auto" (GPU when available), "cpu" or "cuda".
    skullStrip - "hd-bet-v1", "hd-bet" or "none" (the MRI is already skull-stripped).
    saliencyOpacity - opacity of the saliency overlay.
    petAsBackground - show the PET instead of the MRI under the overlay.
    saliencyVolume, topRegionsVolume - the outputs of the last run.
    """

    mriVolume: vtkMRMLScalarVolumeNode
    petVolume: vtkMRMLScalarVolumeNode
    checkpoint: Path
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    skullStrip: Annotated[str, Choice(list(SKULL_STRIP_CHOICES))] = "hd-bet-v1"
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
        self._job = None
        self._timer = None

    def setup(self) -> None:
        """Build the panel from the .ui file and connect it to the parameter node."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AmyloidKD.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AmyloidKDLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self.onProcessTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.setValue(0)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.onCancelButton()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
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
            remembered = slicer.util.settingsValue(CHECKPOINT_SETTINGS_KEY, "")
            if remembered:
                self._parameterNode.checkpoint = Path(remembered)

    def setParameterNode(self, inputParameterNode: Optional[AmyloidKDParameterNode]) -> None:
        """Connect the GUI to ``inputParameterNode`` (and disconnect the previous one)."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._checkCanApply()
        self._updateOverlay()

    def _checkCanApply(self) -> None:
        running = self._job is not None
        parameters = self._parameterNode
        if running:
            self.ui.applyButton.toolTip = _("Processing is running; Cancel stops it.")
            self.ui.applyButton.enabled = False
        elif parameters and parameters.mriVolume and str(parameters.checkpoint or "").strip(". "):
            self.ui.applyButton.toolTip = _("Predict amyloid status and compute the saliency map")
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = _("Select an MRI volume and a checkpoint")
            self.ui.applyButton.enabled = False
        self.ui.cancelButton.enabled = running

    def _updateOverlay(self) -> None:
        parameters = self._parameterNode
        if not parameters or not parameters.saliencyVolume:
            return
        background = parameters.petVolume if parameters.petAsBackground and parameters.petVolume else parameters.mriVolume
        slicer.util.setSliceViewerLayers(background=background, foreground=parameters.saliencyVolume,
                                         foregroundOpacity=parameters.saliencyOpacity)

    def onApplyButton(self) -> None:
        """Start the prediction in the background; the timer follows it."""
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start AmyloidKD."), waitCursor=True):
            self.logic.setupPythonRequirements(parameters.skullStrip, askConfirmation=True)
            self._job = self.logic.startProcessing(
                parameters.mriVolume, parameters.petVolume, checkpoint=parameters.checkpoint,
                device=parameters.device, skullStrip=parameters.skullStrip)
            qt.QSettings().setValue(CHECKPOINT_SETTINGS_KEY, str(parameters.checkpoint))
            self.ui.progressBar.setValue(0)
            self.ui.statusLabel.text = _("Starting...")
            self.ui.resultLabel.text = ""
            self.ui.probabilityLabel.text = ""
            self._timer.start()
        self._checkCanApply()

    def onProcessTimer(self) -> None:
        """Show progress; load the results once the background process has ended."""
        if self._job is None:
            self._timer.stop()
            return
        for event in self._job.process.poll():
            self._showEvent(event)
        if not self._job.process.finished:
            return
        self._timer.stop()
        job, self._job = self._job, None
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("AmyloidKD prediction failed."), waitCursor=True):
            result = self.logic.finishProcessing(job, showResult=True, opacity=parameters.saliencyOpacity)
            parameters.saliencyVolume = result.saliencyNode
            parameters.topRegionsVolume = result.topRegionsNode
            self.ui.progressBar.setValue(100)
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s").format(seconds=result.secondsTotal)
            self.ui.probabilityLabel.text = f"{result.probability:.3f} (threshold {result.threshold:.3f})"
            self.ui.resultLabel.text = result.labelText
        if job.process.returncode not in (0, None):
            self.ui.statusLabel.text = _("Failed: {reason}").format(reason=describe_exit(job.process.returncode))
        self._checkCanApply()

    def _showEvent(self, event: ProcessEvent) -> None:
        if event.progress is not None:
            self.ui.progressBar.setValue(int(round(100 * event.progress.fraction)))
            self.ui.statusLabel.text = event.progress.text
        elif event.line.strip():
            logging.info(f"AmyloidKD: {event.line}")

    def onCancelButton(self) -> None:
        """Stop the background process and everything it started."""
        if self._timer is not None:
            self._timer.stop()
        if self._job is None:
            return
        job, self._job = self._job, None
        self.logic.cancelProcessing(job)
        self.ui.statusLabel.text = _("Cancelled")
        self.ui.progressBar.setValue(0)
        self._checkCanApply()


#
# AmyloidKDLogic
#


@dataclass
class AmyloidKDJob:
    """A prediction running in the background, with what is needed to load its results."""

    process: BackgroundProcess
    request: PredictRequest
    caseName: str
    mriNode: "vtkMRMLScalarVolumeNode"
    petNode: "vtkMRMLScalarVolumeNode"
    workDirectory: Path
    keepOutputs: bool


@dataclass
class AmyloidKDResult:
    """What one prediction gives back: numbers for the panel and the new output nodes."""

    caseName: str
    probability: float
    label: int
    labelText: str
    threshold: float
    seconds: dict
    saliencyNode: "vtkMRMLScalarVolumeNode"
    topRegionsNode: "vtkMRMLLabelMapVolumeNode"
    outputDirectory: Optional[Path]
    log: list = field(default_factory=list)

    @property
    def secondsTotal(self) -> float:
        """Wall time the prediction command reported for this case."""
        return float(self.seconds.get("total") or 0.0)


class AmyloidKDLogic(ScriptedLoadableModuleLogic):
    """Runs a prediction for MRI nodes; usable without the GUI (batch scripts, self-test)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.overlay = OverlaySettings()

    def getParameterNode(self):
        """The module's parameter node, wrapped."""
        return AmyloidKDParameterNode(super().getParameterNode())

    # Dependencies

    @staticmethod
    def _interactive() -> bool:
        return slicer.util.mainWindow() is not None and not slicer.app.commandOptions().testingEnabled

    def setupPythonRequirements(self, skullStrip: Optional[str] = "hd-bet-v1", askConfirmation: bool = True) -> None:
        """Install what the prediction needs: PyTorch via the PyTorch extension, the rest via pip.

        Asks first when Slicer has a main window and is not testing; never replaces a
        package that is already installed. ``skullStrip`` adds that backend's package (None:
        none). Raises ModuleError with what to do otherwise.
        """
        confirm = askConfirmation and self._interactive()
        self._ensureTorch(confirm)
        requirements = read_requirements(REQUIREMENTS_FILE) + list(SKULL_STRIP_REQUIREMENTS.get(skullStrip, ()))
        missing = missing_requirements(requirements)
        if not missing:
            return
        if confirm and not slicer.util.confirmOkCancelDisplay(
                _("AmyloidKD needs these Python packages, which will be downloaded and installed now "
                  "(packages Slicer already has are kept as they are):\n\n{packages}").format(
                    packages="\n".join(missing)),
                windowTitle=_("AmyloidKD: install Python packages")):
            raise ModuleError("AmyloidKD cannot run without " + ", ".join(missing) + ". Click Apply again "
                              "and accept the installation, or install them from Slicer's Python console "
                              "with slicer.util.pip_install.")
        constraintsPath = Path(slicer.util.tempDirectory("AmyloidKD-pip")) / "constraints.txt"
        constraintsPath.write_text(constraints_text(installed_distributions()), encoding="utf-8")
        slicer.util.pip_install(pip_install_arguments(missing, constraintsPath))
        importlib.invalidate_caches()
        stillMissing = missing_requirements(missing)
        if stillMissing:
            raise ModuleError("installing " + ", ".join(stillMissing) + " failed (see the Python console). "
                              "A package may need a newer version of one that Slicer ships; update Slicer.")

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
                        checkpoint=None, device: str = "auto", skullStrip: str = "hd-bet-v1",
                        outputDirectory=None) -> AmyloidKDJob:
        """Write the MRI to a temporary NIfTI and start the prediction CLI on it (returns at once).

        :param mriNode: T1-weighted MRI volume node.
        :param petNode: optional PET volume node registered to the MRI; kept for display only.
        :param checkpoint: student checkpoint folder (or its checkpoint.json).
        :param device: "auto", "cpu" or "cuda".
        :param skullStrip: "hd-bet-v1", "hd-bet" or "none"; None keeps the checkpoint's own setting.
        :param outputDirectory: keep the CLI's files (results.csv, NIfTIs, PNG) here; by default
            they go to a temporary folder that is removed once the results are loaded.
        """
        if mriNode is None:
            raise ModuleError("select an MRI volume first.")
        if checkpoint is None or not str(checkpoint).strip(". "):
            raise ModuleError("select a checkpoint (the folder with model.safetensors and checkpoint.json).")
        checkpointDir = resolve_checkpoint(checkpoint)
        workDirectory = Path(slicer.util.tempDirectory("AmyloidKD"))
        try:
            caseName = re.sub(r"[^A-Za-z0-9_-]+", "_", mriNode.GetName()).strip("_") or "mri"
            inputPath = workDirectory / "input" / f"{caseName}.nii.gz"
            inputPath.parent.mkdir(parents=True, exist_ok=True)
            if not slicer.util.exportNode(mriNode, str(inputPath)):
                raise ModuleError(f"could not write {mriNode.GetName()} to {inputPath}; check free disk space.")
            outDir = Path(outputDirectory) if outputDirectory else workDirectory / "output"
            request = PredictRequest(inputPath, checkpointDir, outDir, device=device, skull_strip=skullStrip)
            command = build_predict_command(self._pythonExecutable(), request)
            env = library_environment(slicer.util.startupEnvironment(), library_parent_directory())
            logging.info("AmyloidKD: " + " ".join(command))
            process = BackgroundProcess.start(command, env=env, cwd=workDirectory)
        except BaseException:
            shutil.rmtree(workDirectory, ignore_errors=True)
            raise
        return AmyloidKDJob(process, request, caseName, mriNode, petNode, workDirectory,
                            keepOutputs=outputDirectory is not None)

    def cancelProcessing(self, job: AmyloidKDJob) -> None:
        """Stop the job's whole process tree and remove its temporary files."""
        job.process.cancel()
        shutil.rmtree(job.workDirectory, ignore_errors=True)

    def finishProcessing(self, job: AmyloidKDJob, showResult: bool = True,
                         opacity: Optional[float] = None) -> AmyloidKDResult:
        """Read the finished job's results, load the saliency and top-region maps as nodes."""
        try:
            job.process.poll()
            returncode = job.process.returncode
            if job.process.cancelled:
                raise ModuleError("the prediction was cancelled.")
            if returncode not in (0, 1):
                raise ModuleError(f"the prediction {describe_exit(returncode)}:\n{job.process.tail()}")
            rows = [r for r in read_results(job.request.out_dir) if r.case == job.caseName]
            if not rows:
                raise ModuleError(f"results.csv has no row for {job.caseName}:\n{job.process.tail()}")
            row: CaseResult = rows[0]
            if not row.ok:
                raise ModuleError(f"the prediction failed for {job.mriNode.GetName()}: {row.error}")
            missing = row.outputs.missing()
            if missing:
                raise ModuleError("the prediction did not write " + ", ".join(str(p) for p in missing))
            result = self._loadOutputs(job, row)
        finally:
            if not job.keepOutputs:
                shutil.rmtree(job.workDirectory, ignore_errors=True)
        if showResult:
            self.showResult(result, job.mriNode, opacity)
        return result

    def _loadOutputs(self, job: AmyloidKDJob, row: CaseResult) -> AmyloidKDResult:
        mriNode: "vtkMRMLScalarVolumeNode" = job.mriNode
        name = mriNode.GetName()
        saliencyNode: "vtkMRMLScalarVolumeNode" = slicer.util.loadVolume(
            str(row.outputs.saliency), properties={"name": f"{name} AmyloidKD saliency", "show": False})
        topRegionsNode: "vtkMRMLLabelMapVolumeNode" = slicer.util.loadLabelVolume(
            str(row.outputs.top_regions), properties={"name": f"{name} AmyloidKD top regions"})
        for node in (saliencyNode, topRegionsNode):
            outputNode: "vtkMRMLScalarVolumeNode" = node
            outputNode.SetAndObserveTransformNodeID(mriNode.GetTransformNodeID())
            outputNode.SetAttribute("AmyloidKD.probability", f"{row.probability:.6f}")
            outputNode.SetAttribute("AmyloidKD.label", str(row.label))
            outputNode.SetAttribute("AmyloidKD.checkpoint", str(job.request.checkpoint))
            if not job.keepOutputs:
                outputNode.StorableModified()  # its file is temporary: offer it in the Save dialog
        return AmyloidKDResult(
            caseName=row.case, probability=row.probability, label=row.label, labelText=row.label_text,
            threshold=row.threshold, seconds=dict(row.seconds), saliencyNode=saliencyNode,
            topRegionsNode=topRegionsNode,
            outputDirectory=job.request.out_dir if job.keepOutputs else None, log=list(job.process.log))

    def showResult(self, result: AmyloidKDResult, mriNode: "vtkMRMLScalarVolumeNode",
                   opacity: Optional[float] = None) -> None:
        """Saliency as a coloured foreground over the MRI, top regions as the label layer.

        (The panel's "Show PET underneath" swaps the background to the PET afterwards.)
        """
        saliencyNode: "vtkMRMLScalarVolumeNode" = result.saliencyNode
        displayNode: "vtkMRMLScalarVolumeDisplayNode" = saliencyNode.GetScalarVolumeDisplayNode()
        displayNode.SetAndObserveColorNodeID(self.overlay.saliencyColorNodeID)
        displayNode.AutoWindowLevelOff()
        displayNode.SetWindowLevelMinMax(0.0, 1.0)
        displayNode.SetThreshold(self.overlay.saliencyLowerThreshold, 1.0)
        displayNode.ApplyThresholdOn()
        slicer.util.setSliceViewerLayers(
            background=mriNode, foreground=saliencyNode, label=result.topRegionsNode,
            foregroundOpacity=self.overlay.foregroundOpacity if opacity is None else opacity,
            labelOpacity=self.overlay.labelOpacity, fit=slicer.app.layoutManager() is not None)

    def process(self, mriNode: "vtkMRMLScalarVolumeNode", petNode: "vtkMRMLScalarVolumeNode" = None,
                checkpoint=None, device: str = "auto", skullStrip: str = "hd-bet-v1", showResult: bool = True,
                outputDirectory=None, progressCallback: Optional[Callable] = None,
                timeout: Optional[float] = None) -> AmyloidKDResult:
        """Predict for one MRI node and create the output nodes; blocks until done.

        Same parameters as :meth:`startProcessing`, plus ``showResult`` (set the slice views),
        ``progressCallback(fraction, text)`` and ``timeout`` in seconds (the run is cancelled
        and ModuleError raised when it is exceeded). Returns an :class:`AmyloidKDResult`.
        """
        job = self.startProcessing(mriNode, petNode, checkpoint=checkpoint, device=device,
                                   skullStrip=skullStrip, outputDirectory=outputDirectory)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not job.process.finished:
                for event in job.process.poll():
                    if event.progress is not None and progressCallback is not None:
                        progressCallback(event.progress.fraction, event.progress.text)
                    elif event.progress is None and event.line.strip():
                        logging.info(f"AmyloidKD: {event.line}")
                if deadline is not None and time.monotonic() > deadline:
                    raise ModuleError(f"the prediction took longer than {timeout:g} s and was stopped.")
                slicer.app.processEvents()
                time.sleep(0.1)
        except BaseException:
            self.cancelProcessing(job)
            raise
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
        """A phantom MRI gets a probability, a [0, 1] saliency on its own grid and a top-region map."""
        self.delayDisplay("Installing what AmyloidKD needs (if anything)")
        logic = AmyloidKDLogic()
        logic.setupPythonRequirements(skullStrip="none", askConfirmation=False)

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
        saliencyNode: "vtkMRMLScalarVolumeNode" = result.saliencyNode
        topRegionsNode: "vtkMRMLLabelMapVolumeNode" = result.topRegionsNode
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

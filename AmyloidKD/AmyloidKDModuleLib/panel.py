"""What the panel shows while a prediction runs, and after it ended, without Qt.

:class:`PredictionController` owns the one running job. Every way a run can end - done,
failed, cancelled, or failing to start - leaves it idle (so Apply works again) and gives an
:class:`Outcome` whose ``status`` is the line the panel shows. The widget in
``AmyloidKD.py`` only forwards button clicks and timer ticks to it and copies the outcome
into its labels. :class:`SelectionFollower` decides which parameter changes concern the
slice views at all.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from AmyloidKDModuleLib.errors import ModuleError
from AmyloidKDModuleLib.runner import ProcessEvent
from AmyloidKDModuleLib.scene import (
    PredictionJob,
    PredictionResult,
    QuantificationJob,
    cancel_prediction,
    case_overlay,
    finish_prediction,
    finish_quantification,
)


def failure_text(error: BaseException) -> str:
    """One readable paragraph for an error: the message of a ModuleError, else type and message."""
    if isinstance(error, ModuleError):
        return str(error) or "unknown error"
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class Outcome:
    """How a run ended, for the panel: a status line, the result, or the reason it failed."""

    status: str
    result: PredictionResult | None = None
    error: str | None = None  # the full reason, for an error dialog
    details: str = ""  # traceback or the command's last output lines

    @property
    def ok(self) -> bool:
        """True when there is a result to show."""
        return self.result is not None


class PredictionController:
    """Start, follow, finish and cancel one prediction (or one PET quantification, a
    :class:`~AmyloidKDModuleLib.scene.QuantificationJob`) for the panel (never leaves it stuck).

    ``scene`` and ``volumes_logic`` are where results are loaded (``slicer.mrmlScene`` and
    ``slicer.modules.volumes.logic()`` in Slicer).
    """

    def __init__(self, scene, volumes_logic, finish: Callable[..., PredictionResult] = finish_prediction) -> None:
        self.scene = scene
        self.volumes_logic = volumes_logic
        self.job: PredictionJob | None = None
        self._finish = finish

    @property
    def running(self) -> bool:
        """True while a job is started and not yet finished or cancelled."""
        return self.job is not None

    def start(self, start_job: Callable[[], PredictionJob]) -> Outcome | None:
        """Run ``start_job`` (export + launch); returns a failed Outcome instead of raising."""
        if self.job is not None:
            return Outcome("Failed: a prediction is already running; cancel it first.",
                           error="a prediction is already running; cancel it first.")
        try:
            self.job = start_job()
        except Exception as error:  # shown in the panel; Apply stays usable
            self.job = None
            return Outcome(f"Failed to start: {failure_text(error).splitlines()[0]}", error=failure_text(error),
                           details=traceback.format_exc())
        return None

    def poll(self) -> list[ProcessEvent]:
        """New output of the running job (empty when idle)."""
        return self.job.process.poll() if self.job is not None else []

    @property
    def finished(self) -> bool:
        """True when the running job's process has ended and its output is read."""
        return self.job is not None and self.job.process.finished

    def finish(self, settings=None) -> Outcome:
        """Load the finished job's results; the controller is idle afterwards, whatever happened."""
        job, self.job = self.job, None
        if job is None:
            return Outcome("Nothing is running.")
        try:
            finish = finish_quantification if isinstance(job, QuantificationJob) else self._finish
            result = finish(self.scene, self.volumes_logic, job, settings)
        except Exception as error:
            reason = failure_text(error)
            return Outcome(f"Failed: {reason.splitlines()[0]}", error=reason,
                           details=job.process.tail() or traceback.format_exc())
        return Outcome(f"Done in {result.seconds_total:.0f} s", result=result)

    def cancel(self) -> Outcome:
        """Stop the running job and everything it started; idle afterwards."""
        job, self.job = self.job, None
        if job is None:
            return Outcome("Nothing is running.")
        try:
            cancel_prediction(job)
        except Exception as error:
            return Outcome(f"Cancelled, but stopping it failed: {failure_text(error)}", error=failure_text(error))
        return Outcome("Cancelled")


@dataclass
class ViewChange:
    """What the slice views need after a parameter change: a new layout, an opacity, or nothing."""

    relayout: bool = False
    previous: tuple = ()  # node IDs shown before (their views are the ones to re-layer)
    opacity: float | None = None


class SelectionFollower:
    """Decides when a parameter change concerns the slice views.

    Only a different MRI, PET, background choice or result re-layers the views; an opacity
    change only sets the opacity; anything else (device, checkpoint, skull stripping, entering
    the module) leaves the views alone. The first state seen is taken as what is shown.
    """

    def __init__(self) -> None:
        self.shown: tuple | None = None
        self.opacity: float | None = None

    @staticmethod
    def case_key(mri_node, pet_node, pet_as_background: bool) -> tuple:
        """(MRI id, PET id, PET underneath, saliency id): what the views should show."""
        overlay = case_overlay(mri_node)
        saliency = overlay.saliency if overlay is not None else None
        return (mri_node.GetID() if mri_node is not None else None,
                pet_node.GetID() if pet_node is not None else None, bool(pet_as_background),
                saliency.GetID() if saliency is not None else None)

    def remember(self, mri_node, pet_node, pet_as_background: bool, opacity: float) -> None:
        """Take the current state as shown (module entered, scene loaded): nothing is re-layered."""
        self.shown = self.case_key(mri_node, pet_node, pet_as_background)
        self.opacity = opacity

    def forget(self) -> None:
        """The next change re-layers (a new result, a closed scene)."""
        self.shown = None

    def change(self, mri_node, pet_node, pet_as_background: bool, opacity: float) -> ViewChange:
        """What to do for the parameters now; updates what is remembered as shown."""
        key = self.case_key(mri_node, pet_node, pet_as_background)
        if mri_node is not None and key != self.shown:
            previous = tuple(v for v in (self.shown or ()) if isinstance(v, str))
            self.shown, self.opacity = key, opacity
            return ViewChange(relayout=True, previous=previous)
        if mri_node is not None and opacity != self.opacity:
            self.opacity = opacity
            return ViewChange(opacity=opacity)
        self.opacity = opacity
        return ViewChange()


@dataclass(frozen=True)
class ButtonStates:
    """Which of the panel's buttons can be clicked now, and the Apply button's tooltip."""

    apply: bool
    use_model: bool
    cancel: bool
    apply_tooltip: str
    quantify: bool = False  # "Quantify PET": an MRI, a PET and a tracer are chosen and nothing runs


class PanelState:
    """What the panel is busy with: installing packages, downloading a model, or predicting.

    One thing at a time. While any of them runs, Apply and "Use this model" are disabled (a
    second click could start a second install or download) and Cancel stops the running one.
    ``install`` is a :class:`~AmyloidKDModuleLib.dependencies.InstallJob`, ``download`` a
    :class:`~AmyloidKDModuleLib.catalog.FetchTask`; ``installing_torch`` covers the PyTorch
    extension's own (blocking) installer.
    """

    def __init__(self, controller: PredictionController) -> None:
        self.controller = controller
        self.install = None
        self.download = None
        self.installing_torch = False

    @property
    def busy(self) -> str | None:
        """"installing", "downloading", "predicting" or None."""
        if self.installing_torch or (self.install is not None):
            return "installing"
        if self.download is not None:
            return "downloading"
        if self.controller.running:
            return "predicting"
        return None

    def buttons(self, ready_to_apply: bool, have_models: bool, ready_to_quantify: bool = False) -> ButtonStates:
        """The buttons for the current activity; ``ready_to_apply``: an MRI and a checkpoint are chosen;
        ``ready_to_quantify``: an MRI, a PET and its tracer are chosen."""
        busy = self.busy
        if busy is not None:
            what = {"installing": "Python packages are being installed",
                    "downloading": "a model is being downloaded",
                    "predicting": "the prediction is running"}[busy]
            return ButtonStates(False, False, True, f"Wait: {what}; Cancel stops it.")
        if not ready_to_apply:
            return ButtonStates(False, have_models, False, "Select an MRI volume and a checkpoint", ready_to_quantify)
        return ButtonStates(True, have_models, False, "Predict amyloid status and compute the saliency map",
                            ready_to_quantify)

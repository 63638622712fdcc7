"""The operators of the BraTS MONAI Deploy application. Each step calls the project's own code (the bundle's series
rules and study checks, its ``inference.json``); the operators only wire it into a Holoscan graph.

Why not the SDK's DICOM operators: ``DICOMSeriesSelectorOperator`` selects by regular expressions per rule and may
return several series per rule, while the model needs exactly one series for each of four MR modalities, chosen
with the contrast agent tag, the acquisition and the series' geometry, and refuses a folder that holds two patients
(``monai_iunet.dicom.selection``/``series``); ``DICOMSeriesToVolumeOperator`` and ``MonaiBundleInferenceOperator``
carry one series into a one-input network, while this model takes four series resampled onto the T1ce grid as four
channels; ``DICOMSegmentationWriterOperator`` would need the label map as an SDK ``Image`` of one series again,
while the bundle writes its SEG with highdicom on the T1ce series it segmented.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from monai.deploy.core import Fragment, Operator, OperatorSpec

from monai_iunet.apps.brats.cases import CaseError
from monai_iunet.apps.brats.findings import case_findings
from monai_iunet.apps.brats.loading import choose_series
from monai_iunet.apps.brats.segment import segment_study
from monai_iunet.bundle import bundle_parser

REPORT = "inference_report.json"
# the application takes the series its rules find; it has no option to pin one
HOW_TO_PIN = ("The application chooses {modality} by the bundle's series_rules: send the study with that series, or "
              "give -m a bundle folder whose configs/inference.json has series_rules matching your protocol names")


def publish(files: list[Path], output: Path) -> list[Path]:
    """Copy files into the output folder so that no reader ever sees one half-written: each is copied under a hidden
    name and renamed (an atomic rename within the folder)."""
    output.mkdir(parents=True, exist_ok=True)
    published = []
    for file in files:
        partial = output / f".{file.name}.partial"
        shutil.copy2(file, partial)
        os.replace(partial, output / file.name)
        published.append(output / file.name)
    return published


def failure_report(case: str, error: str) -> dict:
    """An ``inference_report.json`` for a case that failed before the bundle ran (the bundle's own layout)."""
    return {"summary": {"ok": [], "partial": [], "failed": [case]},
            "cases": {case: {"status": "failed", "inputs": {}, "outputs": {}, "error": error}}}


class BratsSeriesSelectorOperator(Operator):
    """Find the study in the input folder and choose its T1, T1ce, T2 and FLAIR series by the bundle's series rules.

    Emits ``selection``: ``{"study": folder, "study_uid": uid, "series": {modality: what was chosen and why}}``. A
    folder with no study, two studies, or a study without one of the modalities fails here, before the model loads:
    the output folder gets an ``inference_report.json`` with the case ``failed`` and the error, and nothing else.

    Args:
        fragment: the application.
        input_folder: the study folder (as the Informatics Gateway hands it: any nesting and file names).
        output_folder: where the report goes on failure.
        bundle: the bundle folder whose ``inference.json`` holds the ``series_rules``.
        case: the case name in the outputs (default: the study folder's name).
    """

    def __init__(self, fragment: Fragment, *args, input_folder: Path, output_folder: Path, bundle: Path,
                 case: str | None = None, **kwargs) -> None:
        self.input_folder = Path(input_folder)
        self.output_folder = Path(output_folder)
        self.case = case or self.input_folder.resolve().name
        # the rules of the bundle's own loader (its series_rules over the defaults): the choice the bundle makes
        loader = bundle_parser(str(bundle / "configs" / "inference.json")).get_parsed_content(
            "loading#0")
        self.rules = loader.series_rules
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("selection")

    def compute(self, op_input, op_output, context) -> None:
        self.logger.info("indexing the DICOM files under %s", self.input_folder)
        try:
            series, chosen = choose_series(self.case, {"study": self.input_folder}, self.rules, HOW_TO_PIN)
        except CaseError as error:
            publish_report(failure_report(self.case, f"CaseError: {error}"), self.output_folder)
            self.logger.error("%s", error)
            raise
        for modality, choice in chosen.items():
            self.logger.info("%s: series #%s '%s' (%s)", modality, choice.series.number, choice.series.description,
                             choice.reason)
        op_output.emit({"study": self.input_folder, "study_uid": series[0].study_uid,
                        "series": {m: c.report() for m, c in chosen.items()}}, "selection")


class BratsSegmentationOperator(Operator):
    """Segment the selected study with the bundle's ``inference.json`` (``monai_iunet.apps.brats.segment``):
    co-registration onto the T1ce grid, brain extraction unless skull-stripped, scan QC, the ensemble,
    volumes and uncertainty, the NIfTI label map and the DICOM SEG of the T1ce series, the report.

    The bundle writes into a staging folder under the work directory; the report is always published, the case's
    outputs only when every one of them was written (a case that failed or half-failed leaves only its report).

    Args:
        fragment: the application.
        output_folder: the application's output folder.
        bundle: the bundle folder (configs and, unless ``ckpt`` is given, ``models/model.pt``).
        ckpt: the weights, if not the bundle's own.
        workdir: where the staging folder goes (default: the system's temporary folder).
        case: the case name in the outputs (default: the study folder's name).
        device: ``"cpu"`` or ``"cuda"`` (default: cuda when available).
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, bundle: Path, ckpt: Path | None = None,
                 workdir: Path | None = None, case: str | None = None, device: str | None = None, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.bundle, self.ckpt, self.workdir = Path(bundle), ckpt, workdir
        self.case, self.device = case, device
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("selection")

    def compute(self, op_input, op_output, context) -> None:
        selection = op_input.receive("selection")
        case = self.case or Path(selection["study"]).resolve().name
        if self.workdir:
            Path(self.workdir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="brats_", dir=self.workdir) as staging:
            staging = Path(staging)
            self.logger.info("segmenting case %s with the bundle %s", case, self.bundle)
            report, error = segment_study(
                selection["study"], staging, self.bundle, self.device, self.ckpt, case=case,
                pins={m: s["series_instance_uid"] for m, s in selection["series"].items()},
                study_uid=selection["study_uid"])
            entry = report["cases"][case]
            for modality, source in entry.get("inputs", {}).items():  # why the selector chose it, not "pinned"
                source["why"] = selection["series"][modality]["why"]
            if entry["status"] == "ok":
                written = [Path(o["path"]) for o in entry["outputs"].values() if o["status"] == "written"]
                for file, copy in zip(written, publish(written, self.output_folder)):
                    self._point_at(report, file, copy)
                    self.logger.info("wrote %s", copy)
            publish_report(report, self.output_folder)
        if error is not None:
            self.logger.error("case %s: %s; see %s", case, entry.get("error") or error, self.output_folder / REPORT)
            raise error
        self._log_verdicts(case, entry)

    @staticmethod
    def _point_at(report: dict, staged: Path, published: Path) -> None:
        for entry in report["cases"].values():
            for output in entry["outputs"].values():
                if output.get("path") == str(staged):
                    output["path"] = str(published)

    def _log_verdicts(self, case: str, entry: dict) -> None:
        """Every finding of the case (``findings.case_findings``); a flagged one as a warning."""
        for finding in case_findings(entry):
            (self.logger.warning if finding.flagged else self.logger.info)("case %s: %s", case, finding)


def publish_report(report: dict, output: Path) -> Path:
    """Write the report into the output folder (atomically, like the outputs)."""
    with tempfile.TemporaryDirectory() as staging:
        path = Path(staging) / REPORT
        path.write_text(json.dumps(report, indent=2, default=str))
        return publish([path], output)[0]

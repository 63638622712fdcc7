"""Batch inference for bundle configs: every case is tried, a bad case is reported and the others are still written."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage
from tqdm import tqdm

from .cases import RESEARCH_USE, CaseError, CaseKeys, case_name
from .labels import seg_segments

__all__ = ["BatchSegmentation", "case_name", "describe_error"]

logger = logging.getLogger(__name__)

ALGORITHM = "monai-iunet IUNet BraTS"  # the algorithm identification of the DICOM outputs


def describe_error(error: BaseException) -> str:
    """The informative part of an exception chain: MONAI's ``Compose`` wraps errors in "applying transform …", so
    report the first ``CaseError`` in the chain (it names the case and file), else the innermost cause."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    chosen = next((e for e in chain if isinstance(e, CaseError)), chain[-1])
    return f"{type(chosen).__name__}: {chosen}"


class BatchSegmentation:
    """Segment the cases of a datalist one by one; per case write a NIfTI label map on the reference modality's grid
    and, when the reference is a DICOM series, a DICOM SEG of that series.

    A case that fails is logged with its name and error and the others go on. After all cases a report is written
    to ``<output_dir>/inference_report.json``: per case its ``status`` (``ok``, ``partial``: some outputs written,
    or ``failed``), every output with its own status (``written`` with the path, ``failed`` with the error, or
    ``skipped``), and for each modality the file or series it came from (for studies: which series and why). If any
    output failed, ``RuntimeError`` is raised after the report is written, so the run's exit status says so.

    Args:
        cases: datalist items: ``{"image": [4 paths]}``, ``{"image": one 4-channel file}`` or ``{"study": folder}``,
            each with an optional ``"case"`` name.
        network: the network (weights loaded).
        preprocessing: dict transform producing ``"image"`` (channel-first, no batch dimension) and the case's
            records under ``cases.CaseKeys``: where each modality came from (``LoadModalitiesd(sources_key=...)``),
            the brain extraction and its mask (``SkullStripd``), the scan QC (``ScanQCd``), the modality
            check (``ModalityCheckd``).
        inferer: a MONAI inferer, e.g. ``SlidingWindowInferer``.
        postprocessing: dict transform mapping ``"pred"`` to a one-channel label map on the input's original grid
            (e.g. Activationsd, Invertd, AsDiscreted, BratsLabelsFromRegionsd), and putting the uncertainty
            (``CaseUncertaintyd``) and the tumour volumes (``TumourVolumesd``) under their ``CaseKeys``.
        output_dir: where outputs go.
        device: device to run the network on.
        et_label: label of enhancing tumour in the outputs (4 or 3), also used for the DICOM SEG segments.
        dicom_seg: write a DICOM SEG when the reference modality is a DICOM series.
        amp: run the network under autocast (bf16 on CPU, fp16 on CUDA).
        write_brain_mask: write the brain mask (``CaseKeys.BRAIN_MASK``) as ``<case>_brain_mask.nii.gz`` on the
            reference grid when brain extraction ran.
        uncertainty: run the network's ``predict_with_uncertainty`` (``MirrorEnsemble``) instead of its forward, so
            that the postprocessing gets the spreads of its passes (``CaseUncertaintyd``).
        overview: also write ``<case>_overview.png`` (``overview.write_overview``: the reference modality in three
            planes through the tumour with the region contours, the volumes, the QC and uncertainty verdicts).
        overview_channel: the image channel the overview shows (the reference modality).
        dicom_sr: with the DICOM SEG, also write ``<case>_sr.dcm``: a measurement report (TID 1500) of the volumes
            per segment, the RANO measurements and the verdicts (``reporting.write_case_report``).
        dicom_summary: with the DICOM SEG, also write ``<case>_summary.dcm``: the overview page as a Secondary
            Capture image in the study, for viewers that show neither SEG nor SR.
        algorithm_version: the model's version, written into the DICOM objects.
    """

    def __init__(
        self,
        cases: Sequence[dict],
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        output_dir: str,
        device: str | torch.device = "cpu",
        et_label: int = 4,
        dicom_seg: bool = True,
        amp: bool = False,
        write_brain_mask: bool = False,
        uncertainty: bool = False,
        overview: bool = False,
        overview_channel: int = 1,
        dicom_sr: bool = True,
        dicom_summary: bool = True,
        algorithm_version: str = "0",
    ) -> None:
        self.cases = list(cases)
        self.network = network
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.et_label = et_label
        self.dicom_seg = dicom_seg
        self.amp = amp
        self.write_brain_mask = write_brain_mask
        self.uncertainty = uncertainty
        self.overview = overview
        self.overview_channel = overview_channel
        self.dicom_sr = dicom_sr
        self.dicom_summary = dicom_summary
        self.algorithm_version = algorithm_version
        if uncertainty and not callable(getattr(network, "predict_with_uncertainty", None)):
            raise ValueError(f"uncertainty needs a network with predict_with_uncertainty (a MirrorEnsemble), got "
                             f"{type(network).__name__}; set uncertainty false or wrap the network.")
        self.savers = {
            postfix: SaveImage(
                output_dir=str(self.output_dir), output_postfix=postfix, output_ext=".nii.gz", separate_folder=False,
                resample=False, output_dtype="uint8", print_log=False, savepath_in_metadict=True,
            )
            for postfix in ("seg", "brain_mask")
        }

    def run(self) -> dict:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.network.eval()
        cases = {}
        for item in tqdm(self.cases, desc="inference", unit="case"):
            name = given = case_name(item)
            copy = 1
            while name in cases:  # equal names must not overwrite each other's outputs and report entries
                copy += 1
                name = f"{given}_{copy}"
            cases[name] = entry = {"status": "failed", "inputs": {}, "outputs": {}}
            if name != given:
                entry["given_name"] = given
                logger.warning("case name %s used before: this case's outputs are named %s", given, name)
            start = time.perf_counter()
            try:
                self._segment(name, item, entry)
            except Exception as error:  # one bad case must not stop the others
                entry["error"] = describe_error(error)
            entry["seconds"] = round(time.perf_counter() - start, 2)
            outputs = entry["outputs"].values()
            written = [o for o in outputs if o["status"] == "written"]
            failed = "error" in entry or any(o["status"] == "failed" for o in outputs)
            entry["status"] = "partial" if failed and written else "failed" if failed else "ok"
            for kind, output in entry["outputs"].items():
                if output["status"] == "failed":
                    logger.error("case %s: %s failed: %s", name, kind, output["error"])
            if "error" in entry:
                logger.error("case %s failed: %s", name, entry["error"])
            logger.info("case %s: %s; wrote %s", name, entry["status"],
                        ", ".join(o["path"] for o in written) or "nothing")
        summary = {status: sorted(n for n, c in cases.items() if c["status"] == status)
                   for status in ("ok", "partial", "failed")}
        report = {"summary": summary, "cases": cases}
        (self.output_dir / "inference_report.json").write_text(json.dumps(report, indent=2, default=str))
        bad = summary["partial"] + summary["failed"]
        if bad:
            raise RuntimeError(
                f"{len(bad)} of {len(cases)} case(s) have failed outputs ({', '.join(bad)}); everything else was "
                f"written to {self.output_dir}. Details: {self.output_dir / 'inference_report.json'}"
            )
        return report

    def _segment(self, name: str, item: dict, entry: dict) -> None:
        timings = entry["timings_s"] = {}
        mark = [time.perf_counter()]

        def lap(step: str) -> None:  # seconds per step: loading and pre-processing, network, post-processing, writing
            now = time.perf_counter()
            timings[step] = round(now - mark[0], 2)
            mark[0] = now

        data = self.preprocessing(dict(item))
        lap("preprocessing")
        sources = data.get(CaseKeys.SOURCES) or {}
        reference_series = sources.get("reference_series")
        entry["reference"] = sources.get("reference")
        entry["inputs"] = {
            m: {k: v for k, v in s.items() if k != "dicom_series"} for m, s in sources.get("modalities", {}).items()
        }
        if sources.get("unreadable"):  # series of the study not used because files of theirs cannot be read
            entry["unreadable_files"] = sources["unreadable"]
        for key in (CaseKeys.BRAIN_EXTRACTION, CaseKeys.QC, CaseKeys.MODALITY_CHECK):
            if key in data:
                entry[key.value] = data[key]
        image = data["image"].unsqueeze(0).to(self.device)
        network = self.network.predict_with_uncertainty if self.uncertainty else self.network
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            output = self.inferer(image, network)
        outputs = output if isinstance(output, Mapping) else {"pred": output}
        data.update({key: value[0].float().cpu() for key, value in outputs.items()})
        lap("inference")
        data = self.postprocessing(data)
        lap("postprocessing")
        for key in (CaseKeys.UNCERTAINTY, CaseKeys.VOLUMES, CaseKeys.RANO):
            if key in data:
                entry[key.value] = data[key]
        # the three warnings in one place: a case any of them flags needs a human look
        signals = ((CaseKeys.QC, "scan QC"), (CaseKeys.MODALITY_CHECK, "modality check"),
                   (CaseKeys.UNCERTAINTY, "uncertainty"))
        raised = [name for key, name in signals if (entry.get(key.value) or {}).get("flagged")]
        entry["review"] = {"needed": bool(raised), "because": raised}
        label: MetaTensor = data["pred"]
        entry["outputs"]["nifti"] = {"status": "written", "path": self._save(label, name, "seg")}
        overview = self.output_dir / f"{name}_overview.png"
        if self.overview:
            from .overview import write_overview

            write_overview(data["image"], label, overview, self.et_label, entry, self.overview_channel)
            entry["outputs"]["overview"] = {"status": "written", "path": str(overview)}
        if self.write_brain_mask:
            mask = data.get(CaseKeys.BRAIN_MASK)
            entry["outputs"]["brain_mask"] = (
                {"status": "written", "path": self._save(mask, name, "brain_mask")} if mask is not None else
                {"status": "skipped", "reason": "no brain extraction ran: "
                 + str((entry.get("brain_extraction") or {}).get("why", "SkullStripd is not in the preprocessing"))}
            )
        self._write_dicom(name, data, label, entry, reference_series, overview)
        lap("writing")

    def _write_dicom(self, name: str, data: dict, label: MetaTensor, entry: dict, reference_series,
                     overview: Path) -> None:
        """The DICOM outputs of a case on a DICOM reference series: SEG, then the SR and the summary page about it."""
        if not self.dicom_seg or reference_series is None:
            why = "disabled (write_dicom_seg: false)" if not self.dicom_seg else "the reference image is not DICOM"
            entry["outputs"]["dicom_seg"] = {"status": "skipped", "reason": why}
            return
        def seg(path: Path) -> Path:
            # highdicom only when a DICOM SEG is written: MONAI Label's environment pins pydicom<3, which it refuses.
            from ...dicom.seg import write_dicom_seg

            return write_dicom_seg(label[0].numpy(), label.affine.numpy(), reference_series, path,
                                   seg_segments(self.et_label), software_version=self.algorithm_version,
                                   algorithm_name=ALGORITHM, model_name="IUNet BraTS segmentation",
                                   series_description=f"IUNet tumour segmentation ({RESEARCH_USE})")

        output = self.output_dir / f"{name}_seg.dcm"
        # the NIfTI is written; a failed SEG is reported on its own, and the SR and summary about it are not made
        if not self._write_output(entry, "dicom_seg", seg, output, reference_series.uid):
            return
        if self.dicom_sr:
            from .reporting import write_case_report

            self._write_output(entry, "dicom_sr", lambda path: write_case_report(
                entry, output, reference_series, path, self.et_label, ALGORITHM, self.algorithm_version),
                self.output_dir / f"{name}_sr.dcm", reference_series.uid)
        if self.dicom_summary:
            def summary(path: Path) -> Path:
                from ...dicom.sc import write_secondary_capture
                from .overview import read_rgb, write_overview

                page = overview if self.overview else self.output_dir / f".{name}_summary.png"
                if not self.overview:
                    write_overview(data["image"], label, page, self.et_label, entry, self.overview_channel)
                try:
                    return write_secondary_capture(read_rgb(page), reference_series, path,
                                                   f"IUNet tumour summary ({RESEARCH_USE})",
                                                   software_version=self.algorithm_version)
                finally:
                    if not self.overview:
                        page.unlink(missing_ok=True)

            self._write_output(entry, "dicom_summary", summary, self.output_dir / f"{name}_summary.dcm",
                               reference_series.uid)

    @staticmethod
    def _write_output(entry: dict, kind: str, write: Callable[[Path], Path], path: Path, source: str) -> bool:
        """Write one DICOM output of a case; its failure is reported on its own (the others stand). Whether it was
        written."""
        try:
            entry["outputs"][kind] = {"status": "written", "path": str(write(path)), "source_series": source}
            return True
        except Exception as error:
            entry["outputs"][kind] = {"status": "failed", "error": describe_error(error), "source_series": source}
            return False

    def _save(self, image: MetaTensor, name: str, postfix: str) -> str:
        """Write ``<name>_<postfix>.nii.gz``; the path is the one the writer reports."""
        # SaveImage strips what looks like an extension from the name it is given (a UID's last component, the
        # ".J" of "Doe.J"): give it the name with the extension it writes, so that only that comes off.
        image.meta["filename_or_obj"] = f"{name}.nii.gz"
        self.savers[postfix](image)
        return str(image.meta["saved_to"])

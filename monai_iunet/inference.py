"""Batch inference for bundle configs: every case is tried, a bad case is reported and the others are still written."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.transforms import SaveImage
from tqdm import tqdm

from .transforms import CaseError, case_name

__all__ = ["BatchSegmentation", "case_name", "describe_error"]

logger = logging.getLogger(__name__)


def describe_error(error: BaseException) -> str:
    """The informative part of an exception chain: MONAI's ``Compose`` wraps errors in "applying transform …", so
    report the first ``CaseError`` in the chain (it names the case and file), else the innermost cause."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    chosen = next((e for e in chain if isinstance(e, CaseError)), chain[-1])
    return f"{type(chosen).__name__}: {chosen}"


class BatchSegmentation:
    """Segment the cases of a datalist one by one and write a NIfTI label map per case (and a DICOM SEG for DICOM
    input). A case that fails is logged with its name and error and skipped; after all cases a report is written to
    ``<output_dir>/inference_report.json`` and, if any case failed, ``RuntimeError`` is raised so that the run's exit
    status says so.

    Args:
        cases: datalist items ``{"image": [4 paths], "case": optional name}``.
        network: the network (weights loaded).
        preprocessing: dict transform producing ``"image"`` (channel-first, no batch dimension).
        inferer: a MONAI inferer, e.g. ``SlidingWindowInferer``.
        postprocessing: dict transform mapping ``"pred"`` to a one-channel label map on the input's original grid
            (e.g. Activationsd, Invertd, AsDiscreted, BratsLabelsFromRegionsd).
        output_dir: where outputs go.
        device: device to run the network on.
        et_label: label of enhancing tumour in the outputs (4 or 3), also used for the DICOM SEG segments.
        dicom_seg: write a DICOM SEG when a case's first image is a DICOM series folder.
        amp: run the network under autocast (CUDA).
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
        self.saver = SaveImage(
            output_dir=str(self.output_dir), output_postfix="seg", output_ext=".nii.gz", separate_folder=False,
            resample=False, output_dtype="uint8", print_log=False,
        )

    def run(self) -> dict:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.network.eval()
        report = {"written": {}, "failed": {}}
        for item in tqdm(self.cases, desc="inference", unit="case"):
            name = case_name(item)
            try:
                report["written"][name] = self._segment(name, item)
                logger.info("case %s: wrote %s", name, ", ".join(report["written"][name]))
            except Exception as error:  # one bad case must not stop the others
                report["failed"][name] = describe_error(error)
                logger.error("case %s failed: %s", name, report["failed"][name])
        (self.output_dir / "inference_report.json").write_text(json.dumps(report, indent=2))
        if report["failed"]:
            raise RuntimeError(
                f"{len(report['failed'])} of {len(self.cases)} case(s) failed ({', '.join(report['failed'])}); the "
                f"others were written to {self.output_dir}. Details: {self.output_dir / 'inference_report.json'}"
            )
        return report

    def _segment(self, name: str, item: dict) -> list[str]:
        data = self.preprocessing(dict(item))
        image = data["image"].unsqueeze(0).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            data["pred"] = self.inferer(image, self.network)[0].float().cpu()
        data = self.postprocessing(data)
        label: MetaTensor = data["pred"]
        label.meta["filename_or_obj"] = name
        self.saver(label)
        written = [str(self.output_dir / f"{name}_seg.nii.gz")]
        first_image = Path(str(item["image"][0]))
        if self.dicom_seg and first_image.is_dir():
            # highdicom only when a DICOM SEG is written: MONAI Label's environment pins pydicom<3, which it refuses.
            from .data.dicom_seg import write_dicom_seg

            output = self.output_dir / f"{name}_seg.dcm"
            write_dicom_seg(label[0].numpy(), label.affine.numpy(), first_image, output, self.et_label)
            written.append(str(output))
        return written

"""The BraTS iUNet model as a MONAI Deploy application: a DICOM study in, a DICOM SEG, a NIfTI label map and the
per-case report out.

    python deploy/brats_iunet_app -i STUDY_DIR -o OUT_DIR [-m MODEL] [-w WORKDIR] [-l DEBUG]   # as the SDK runs apps
    python -m deploy.brats_iunet_app -i STUDY_DIR -o OUT_DIR                                 # the same

``-i``/``-o``/``-m``/``-w`` or ``HOLOSCAN_INPUT_PATH``/``HOLOSCAN_OUTPUT_PATH``/``HOLOSCAN_MODEL_PATH``/
``HOLOSCAN_WORKDIR`` as for every MONAI Deploy application (the arguments win). The model is a bundle folder
(``configs/inference.json``, ``models/model.pt``), a folder holding one bundle folder (a MAP's
``/opt/holoscan/models``), or a weights file for the installed bundle; absent, the bundle installed with monai-iunet.
The graph: ``BratsSeriesSelectorOperator`` (the study and its four series, by the bundle's rules) →
``BratsSegmentationOperator`` (the bundle's ``inference.json``). The process exits non-zero when the case failed;
the output folder then holds only ``inference_report.json`` with the error.
"""

from __future__ import annotations

import logging
from pathlib import Path

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application

from monai_iunet.apps.brats.segment import quiet_library_notices
from monai_iunet.bundle import bundle_path

if __package__:
    from .operators import BratsSegmentationOperator, BratsSeriesSelectorOperator
else:  # run as a folder (python deploy/brats_iunet_app; the MAP's entry point): the folder is on sys.path
    from operators import BratsSegmentationOperator, BratsSeriesSelectorOperator

BUNDLE_NAME = "brats_iunet_segmentation"


def resolve_model(model_path: str) -> tuple[Path, Path | None]:
    """``(bundle folder, weights or None for the bundle's own)`` from the app's model path."""
    path = Path(model_path) if model_path else None
    if path is None or not path.exists():
        return bundle_path(BUNDLE_NAME), None
    if path.is_file():
        return bundle_path(BUNDLE_NAME), path
    if (path / "configs" / "inference.json").is_file():
        return path, None
    bundles = [p for p in path.iterdir() if (p / "configs" / "inference.json").is_file()]
    if len(bundles) == 1:
        return bundles[0], None
    raise FileNotFoundError(
        f"model path {path} is neither a bundle folder (configs/inference.json), a folder holding one bundle "
        f"({len(bundles)} found), nor a weights file; pass -m <bundle folder> or -m <model.pt>.")


class BratsSegmentationApp(Application):
    """Segments brain tumours (TC, WT, ET) in one MR study with T1, T1ce, T2 and FLAIR series."""

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self.argv)  # -i/-o/-m/-w/-l; sets up logging
        quiet_library_notices()
        logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO lines list every attribute it copies
        bundle, ckpt = resolve_model(context.model_path)
        output = Path(context.output_path)
        logging.getLogger(__name__).info("input %s, output %s, bundle %s, weights %s", context.input_path, output,
                                         bundle, ckpt or bundle / "models" / "model.pt")
        selector = BratsSeriesSelectorOperator(
            self, CountCondition(self, 1), input_folder=Path(context.input_path), output_folder=output,
            bundle=bundle, name="series_selector")
        segmentation = BratsSegmentationOperator(
            self, output_folder=output, bundle=bundle, ckpt=ckpt, workdir=Path(context.workdir) if context.workdir
            else None, name="brats_segmentation")
        self.add_flow(selector, segmentation, {("selection", "selection")})

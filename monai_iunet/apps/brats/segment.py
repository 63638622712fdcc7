"""Segment one DICOM study folder with the BraTS bundle: the command for a clinician's machine.

    monai-iunet-segment STUDY_DIR --output OUT_DIR [--bundle DIR] [--device cpu|cuda]
    python -m monai_iunet.apps.brats.segment ...     # the same

STUDY_DIR is a study as a PACS or CD export leaves it (any nesting and file names, DICOMDIR or not). The bundle's
``configs/inference.json`` picks a series per modality (T1, T1ce, T2, FLAIR) by its ``series_rules``, brings them
onto the T1ce grid, skull-strips them unless they already are (deepbet on the T1ce; ``--skull-strip``) and writes
``OUT_DIR/<case>_seg.nii.gz``, ``OUT_DIR/<case>_seg.dcm`` (DICOM SEG of the T1ce series) and
``OUT_DIR/inference_report.json``. The shipped model is an ensemble of five cross-validated IUNets, one pass per
member (about 30 s per case on 2 CPU cores; ``--tta``: also the 7 mirror images, about 5x the time). The command
prints the outputs, which series were used,
the brain extraction, the scan QC (a typicality score and a check that each slot holds the contrast it should:
warnings, not refusals; ``--no-qc``), the tumour volumes in
mL and the uncertainty verdict (a likely failure is flagged: a warning, not a refusal), and exits non-zero when an
output failed. ``--overview`` also writes ``OUT_DIR/<case>_overview.png``: the T1ce in three planes through the tumour
with the region contours, volumes and verdicts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

__all__ = ["segment_study", "print_report", "main"]



def quiet_library_notices() -> None:
    """A clinician reads the command's own output: MONAI announces on every run that its optional GPU DICOM decoder
    (nvImageCodec) is not installed, which says nothing about the study."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin")

def segment_study(
    study: str | Path,
    output: str | Path,
    bundle: str | Path | None = None,
    device: str | None = None,
    ckpt: str | Path | None = None,
    configs: list[str] | None = None,
    case: str | None = None,
    pins: dict[str, str] | None = None,
    study_uid: str | None = None,
    plans: list[str] | None = None,
    **overrides,
) -> tuple[dict, BaseException | None]:
    """Run the bundle's inference on one study folder; returns the report and the runner's error (None if every
    output was written). ``configs`` are further config files layered on ``inference.json``; ``plans`` are
    metadata overlays merged over the bundle's ``metadata.json`` (``plans#...`` keys: the facts of weights trained
    with another network, grid or crop); ``overrides`` set top-level ids (``coregister=True``,
    ``reference_modality="t1"``, …)."""
    import torch

    from ...bundle import bundle_parser, bundle_path

    bundle = Path(bundle).resolve() if bundle else bundle_path("brats_iunet_segmentation")
    study, output = Path(study).resolve(), Path(output).resolve()
    if not (bundle / "configs" / "inference.json").is_file():
        raise FileNotFoundError(f"{bundle} is not a bundle folder (no configs/inference.json); pass --bundle.")
    if not study.is_dir():
        raise FileNotFoundError(f"study folder {study} does not exist.")
    ckpt = Path(ckpt) if ckpt else bundle / "models" / "model.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"no trained weights at {ckpt}: train the bundle (configs/train.json) or pass --ckpt path/to/model.pt."
        )
    item = {"study": str(study), **({"case": case} if case else {}), **({"series": pins} if pins else {}),
            **({"study_uid": study_uid} if study_uid else {})}
    parser = bundle_parser([str(bundle / "configs" / "inference.json")] + [str(c) for c in configs or []],
                           meta_file=[bundle / "configs" / "metadata.json", *(plans or [])])
    parser.update({
        "bundle_root": str(bundle), "output_dir": str(output), "ckpt_path": str(ckpt), "test_datalist": [item],
        **({"device": f"$torch.device('{device}')"} if device else {}), **overrides,
    })
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda given but no CUDA device is available; use --device cpu.")
    parser.get_parsed_content("initialize")  # loads the weights
    error = None
    try:
        parser.get_parsed_content("runner").run()
    except RuntimeError as failure:  # some output failed: the report says which
        error = failure
    return json.loads((output / "inference_report.json").read_text()), error


def print_report(report: dict) -> None:
    """Print an ``inference_report.json`` in words: per case its inputs, outputs, brain extraction, scan QC, tumour
    volumes and uncertainty verdict."""
    from .findings import case_findings

    for name, case in report["cases"].items():
        print(f"case {name}: {case['status']}")
        for modality, source in case.get("inputs", {}).items():
            marker = " (reference grid)" if source.get("reference") else ""
            print(f"  {modality:6s} series #{source.get('series_number')} '{source.get('description')}'"
                  f" {source.get('series_instance_uid')}{marker}\n         why: {source.get('why')}")
        for kind, result in case.get("outputs", {}).items():
            detail = result.get("path") or result.get("error") or result.get("reason")
            print(f"  {kind}: {result['status']}: {detail}")
        extraction = case.get("brain_extraction")
        if extraction:
            done = (f"{extraction['tool']} {extraction['version']} on {extraction['modality']}: "
                    f"{extraction['brain_ml']} mL in {extraction['seconds']} s" if extraction["applied"]
                    else f"not applied ({extraction['why']})")
            print(f"  brain extraction: {done}")
        for finding in case_findings(case):
            print(f"  {finding}")
            if finding.name == "RANO":
                for k, lesion in enumerate(case["rano"]["lesions"], start=1):
                    print(f"    ET lesion {k}: {lesion['longest_mm']} x {lesion['perpendicular_mm']} mm = "
                          f"{lesion['product_mm2']} mm2 ({'measurable' if lesion['measurable'] else 'not measurable'})"
                          f", {lesion['volume_ml']} mL")
        if case.get("error"):
            print(f"  error: {case['error']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="monai-iunet-segment", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("study", type=Path, help="DICOM study folder")
    parser.add_argument("--output", type=Path, required=True, help="output folder")
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: the installed BraTS bundle)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--ckpt", type=Path, help="weights (default: <bundle>/models/model.pt)")
    parser.add_argument("--config", action="append", default=[], help="further config file layered on inference.json")
    parser.add_argument("--plans", action="append", default=[],
                        help="metadata overlay merged over the bundle's metadata.json (plans#... keys) for weights "
                             "trained with another network, grid or crop")
    parser.add_argument("--case", help="case name for the outputs (default: the study folder's name)")
    parser.add_argument("--series", action="append", default=[], metavar="MODALITY=UID_OR_NUMBER",
                        help="pin a modality's series, e.g. --series t1ce=7")
    parser.add_argument("--study", dest="study_uid", metavar="STUDY_INSTANCE_UID",
                        help="the study to segment when the folder holds several studies or patients")
    parser.add_argument("--coregister", action="store_true", help="rigidly co-register the series (elastix)")
    parser.add_argument("--skull-strip", choices=["auto", "true", "false"],
                        help="brain extraction (deepbet) before segmenting; default from the bundle: auto (strip "
                             "unless the images are already skull-stripped)")
    parser.add_argument("--write-brain-mask", action="store_true",
                        help="also write <case>_brain_mask.nii.gz when brain extraction ran")
    parser.add_argument("--no-qc", action="store_true",
                        help="skip the scan QC (the flow's typicality score and the modality check)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="mirroring test-time augmentation (8 passes per member, ~5x the time, +0.002 mean Dice "
                             "out-of-fold); default from the bundle's plans: off")
    parser.add_argument("--overview", action="store_true", help="also write <case>_overview.png")
    args = parser.parse_args(argv)
    quiet_library_notices()
    pins = dict(pin.split("=", 1) for pin in args.series)
    overrides = {
        **({"coregister": True} if args.coregister else {}),
        **({"skull_strip": args.skull_strip} if args.skull_strip else {}),
        **({"write_brain_mask": True} if args.write_brain_mask else {}),
        **({"scan_qc": False} if args.no_qc else {}),
        **({"tta": args.tta} if args.tta is not None else {}),
        **({"overview": True} if args.overview else {}),
    }
    try:
        report, error = segment_study(args.study, args.output, args.bundle, args.device, args.ckpt, args.config,
                                      args.case, pins, args.study_uid, args.plans, **overrides)
    except FileNotFoundError as missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    print_report(report)
    print(f"report: {Path(args.output).resolve() / 'inference_report.json'}")
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

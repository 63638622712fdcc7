#!/usr/bin/env python
"""Where the BraTS bundle's inference spends its time on one case: every pre- and post-processing transform
(loading, brain extraction, resampling, QC, ``Invertd``, …), the sliding-window inference (windows and network
passes counted), and the writers, timed in-process around the bundle's own ``inference.json`` objects.

    python -m scripts.profile_inference CASE_DIR [--set tta=false num_members=1 ...] [--output FILE.json]

With ``--output``, the numbers go to that JSON file and the table to the Markdown file beside it.

Each stage is timed by wrapping the ``__call__`` of its class while the bundle's ``BatchSegmentation`` runs the case
exactly as ``monai.bundle run`` would (the shipped model unless ``--set ckpt_path=...``); nothing else changes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.bundle import bundle_parser
from scripts import BUNDLE


@contextmanager
def timed(cls: type, method: str, label: str, totals: dict, counts: dict):
    """Add the wall time and number of calls of ``cls.method`` to ``totals[label]`` / ``counts[label]``."""
    original = getattr(cls, method)

    def wrapper(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - start
            counts[label] += 1

    setattr(cls, method, wrapper)
    try:
        yield
    finally:
        setattr(cls, method, original)


def profile_case(case_dir: Path, overrides: dict) -> dict:
    from contextlib import ExitStack

    from monai_iunet.apps.brats.inference import BatchSegmentation

    os.chdir(BUNDLE)
    work = Path(tempfile.mkdtemp(prefix="profile_inference_"))
    images = [str(next(case_dir.glob(f"*_{m}.nii*"))) for m in MODALITIES]
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": images, "case": case_dir.name}]}))
    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"data_list_file_path": str(datalist), "dataset_dir": str(work), "output_dir": str(work / "out"),
                   "bundle_root": str(BUNDLE), "write_dicom_seg": False, **overrides})
    started = time.perf_counter()
    runner = parser.get_parsed_content("runner")
    build_s = time.perf_counter() - started
    totals: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    stages = []
    for kind in ("preprocessing", "postprocessing"):
        for transform in parser.get_parsed_content(kind).transforms:
            stages.append((type(transform), "__call__", f"{kind}: {type(transform).__name__}"))
    network = parser.get_parsed_content("network")
    stages += [
        (type(parser.get_parsed_content("inferer")), "__call__", "sliding-window inference (all windows)"),
        (type(network.members[0]), "forward", "network passes (member × mirror × window)"),
        (BatchSegmentation, "_save", "writing NIfTI"),
    ]
    with ExitStack() as stack:
        for cls, method, label in dict.fromkeys(stages):  # a class used twice is wrapped once
            stack.enter_context(timed(cls, method, label, totals, counts))
        started = time.perf_counter()
        report = runner.run()
        case_s = time.perf_counter() - started
    entry = next(iter(report["cases"].values()))
    return {
        "case": case_dir.name, "overrides": overrides, "status": entry["status"], "build_s": build_s,
        "case_s": case_s, "threads": torch.get_num_threads(),
        "stages": {label: {"seconds": totals[label], "calls": counts[label]} for label in totals},
    }


def write_markdown(result: dict, path: Path, command: str) -> None:
    total = result["case_s"]
    lines = [
        f"# Where BraTS inference spends its time (one case, {result['threads']} thread(s))", "",
        f"Reproduce: `{command}`. Case {result['case']} (status {result['status']}), the bundle's `inference.json` "
        f"with the shipped model{' and ' + json.dumps(result['overrides']) if result['overrides'] else ''}; each "
        "stage timed around its class's `__call__` (the network's `forward`), the sliding window includes the "
        "network passes it makes.", "",
        "| stage | calls | seconds | share of the case |", "|---|---:|---:|---:|",
    ]
    for label, stage in sorted(result["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"| {label} | {stage['calls']} | {stage['seconds']:.1f} | {stage['seconds'] / total:.1%} |")
    lines.append(f"| **the case** | | **{total:.1f}** | |")
    path.write_text("\n".join(lines) + "\n")


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case_dir", type=Path)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="inference.json overrides")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in args.set)}
    output = args.output.resolve() if args.output else None  # the bundle runs from its own folder
    result = profile_case(args.case_dir.resolve(), overrides)
    for label, stage in sorted(result["stages"].items(), key=lambda kv: -kv[1]["seconds"]):
        print(f"{stage['seconds']:8.1f} s  {stage['calls']:5d} calls  {label}")
    print(f"{result['case_s']:8.1f} s  the case ({result['status']}); building the bundle {result['build_s']:.1f} s")
    if output:
        output.write_text(json.dumps(result, indent=1))
        write_markdown(result, output.with_suffix(".md"), " ".join(["python -m scripts.profile_inference",
                                                                    *sys.argv[1:]]))


if __name__ == "__main__":
    main()

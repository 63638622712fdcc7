"""End-to-end time per study through the AI node (issue 34, item 5): a real BraTS case written as a PACS export
is sent by storescu (the scanner) to ``monai-iunet-node`` (the installed bundle) whose destination is a plain
Orthanc (the PACS); from the last instance received to the results in the PACS, split into waiting for the study to
be stable, pick-up, download from Orthanc, loading and pre-processing, inference, post-processing, writing the
DICOM results, the rest of the processor (bundle parsing, weights), storing into Orthanc and sending. With and
without mirroring (TTA), a fresh node per run.

    python -m scripts.benchmark_node [--runs 1] [--stable-age 10] [--output docs/benchmarks/node]

Writes ``<output>.json`` and ``<output>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.data.synthetic import write_pacs_study
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.node.orthanc import Orthanc

CASE = real_data() / "brats" / "Brats18_2013_2_1"
STEPS = ("stable wait", "pick-up", "download", "preprocessing", "inference", "postprocessing", "writing",
         "processor rest", "store", "send")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)
    return value


def one_run(study: Path, tta: bool, stable_age: int, folder: Path) -> dict:
    pacs_dicom, pacs_http = free_port(), free_port()
    (folder / "pacs.json").write_text(json.dumps({
        "Name": "PACS", "DicomAet": "PACS", "DicomPort": pacs_dicom, "HttpPort": pacs_http,
        "StorageDirectory": str(folder / "pacs"), "IndexDirectory": str(folder / "pacs"),
        "DicomAlwaysAllowStore": True, "Plugins": []}))
    node_dicom, node_http = free_port(), free_port()
    config = folder / "node.json"
    config.write_text(json.dumps({
        "aet": "IUNETNODE", "dicom_port": node_dicom, "http_port": node_http, "allowed_aets": ["SCANNER"],
        "destinations": {"pacs": {"aet": "PACS", "host": "127.0.0.1", "port": pacs_dicom}},
        "work_dir": str(folder / "node"), "device": "cpu", "tta": tta, "stable_age": stable_age, "retry_s": 5}))
    pacs = subprocess.Popen(["Orthanc", str(folder / "pacs.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = open(folder / "node.log", "w")
    node = subprocess.Popen([sys.executable, "-m", "monai_iunet.apps.brats.node", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(Orthanc(f"http://127.0.0.1:{pacs_http}").alive, 60, "the PACS")
        wait(lambda: "worker 0 started" in (folder / "node.log").read_text(), 120, "the node")
        time.sleep(10)  # the worker's imports, before the clock starts
        files = sorted(p for p in study.iterdir() if p.is_file())
        subprocess.run(["storescu", "-aet", "SCANNER", "-aec", "IUNETNODE", "127.0.0.1", str(node_dicom),
                        *map(str, files)], check=True, capture_output=True, timeout=600)
        last_received = time.time()
        report = folder / "node" / "node_report.jsonl"
        line = wait(lambda: next((json.loads(x) for x in report.read_text().splitlines()
                                  if json.loads(x)["state"] in ("delivered", "failed")), None)
                    if report.is_file() else None, 3600, "the results")
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(120)
        pacs.terminate()
        pacs.wait(60)
    if line["state"] != "delivered":
        raise RuntimeError(f"the study was not delivered: {line['reason']}")
    inside = line["details"]["timings_s"]
    steps = {
        "stable wait": line["stable_at"] - last_received,
        "pick-up": line["picked_up"] - line["stable_at"],
        "download": line["timings"]["download_s"],
        **{k: inside[k] for k in ("preprocessing", "inference", "postprocessing", "writing")},
        "processor rest": line["timings"]["process_s"] - sum(inside.values()),
        "store": line["timings"]["store_s"],
        "send": line["delivered_at"] - line["stored_at"],
    }
    return {"tta": tta, "steps_s": {k: round(v, 2) for k, v in steps.items()},
            "end_to_end_s": round(line["delivered_at"] - last_received, 2),
            "after_stable_s": round(line["delivered_at"] - line["stable_at"], 2),
            "volumes_ml": line["details"]["volumes_ml"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs per setting (medians reported)")
    parser.add_argument("--stable-age", type=int, default=10, help="the node's stable_age for the runs (s)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/node"))
    parser.add_argument("--render", action="store_true", help="only write the table from <output>.json")
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.output.with_suffix(".json").read_text()), args.output))
        return
    work = Path(tempfile.mkdtemp(prefix="node_bench_"))
    try:
        images = {m: nib.load(CASE / f"{CASE.name}_{m}.nii.gz") for m in MODALITIES}
        study = work / "study"
        write_pacs_study({m: np.asarray(i.dataobj, dtype=np.float32) for m, i in images.items()},
                         images["t1ce"].affine, study, "BRATS_2013_2", seed=7)
        runs = []
        for _ in range(args.runs):
            for tta in (True, False):
                folder = work / f"run{len(runs)}"
                folder.mkdir()
                runs.append(one_run(study, tta, args.stable_age, folder))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"case": CASE.name, "stable_age_s": args.stable_age, "runs": runs, "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "load_average_after": os.getloadavg(),
              "torch_threads": "default (2)"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(render(result, args.output))


def render(result: dict, output: Path) -> str:
    """The table: median seconds per step over the runs of each setting; end to end with its range."""
    runs = result["runs"]
    table = ["| seconds per study (median) | " + " | ".join(STEPS) + " | end to end (range) | after stable |",
             "|---|" + "---:|" * (len(STEPS) + 2)]
    for tta in (True, False):
        chosen = [r for r in runs if r["tta"] == tta]
        medians = [statistics.median(r["steps_s"][key] for r in chosen) for key in STEPS]
        ends = [r["end_to_end_s"] for r in chosen]
        table.append(f"| {'mirroring on (default)' if tta else '--no-tta (tta: false)'}, {len(chosen)} runs | "
                     + " | ".join(f"{m:.1f}" for m in medians)
                     + f" | {statistics.median(ends):.1f} ({min(ends):.1f}–{max(ends):.1f})"
                     f" | {statistics.median(r['after_stable_s'] for r in chosen):.1f} |")
    text = "\n".join(table) + "\n"
    output.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    main()

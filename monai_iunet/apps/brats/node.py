"""The BraTS model as an AI node beside a PACS: ``monai-iunet-node --config node.json``.

Orthanc (the user's installation: Debian ``orthanc``, ``orthanc-python``, ``orthanc-dicomweb``) receives studies
over DICOM from the AE titles in ``allowed_aets`` (any other association is refused) and over DICOMweb (STOW-RS);
each study, once complete (no new instance for ``stable_age`` seconds), is segmented by a worker running the same
code as ``monai-iunet-segment`` (the bundle's inference.json), and its DICOM SEG, measurement report (SR) and summary
page (Secondary Capture) are stored into the study and sent to every destination, retried while one is down. A study
that cannot be segmented (a missing modality, two patients, not a brain MR) gets no result; why is in the worker's
log and in ``<work_dir>/node_report.jsonl``. ``node.json``'s keys: ``monai_iunet.node.config``.

    monai-iunet-node --config node.json            # run until SIGTERM / Ctrl-C
    monai-iunet-node --config node.json --status   # the queue and the last results
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from ...node import NodeConfig, NodeConfigError, Outcome, Worker, load_jobs, run_node
from ...node.supervisor import WORKER_CREDENTIALS_ENV

__all__ = ["brats_processor", "main"]

DICOM_OUTPUTS = ("dicom_seg", "dicom_sr", "dicom_summary")


def brats_processor(config: NodeConfig):
    """The node's processor: ``segment_study`` on the study folder with the node's bundle, device, configs and TTA;
    the SEG, SR and summary page are its results."""
    from .segment import quiet_library_notices, segment_study

    quiet_library_notices()
    overrides = {"tta": config.tta} if config.tta is not None else {}

    def process(study: Path, output: Path) -> Outcome:
        report, _ = segment_study(study, output, config.bundle, config.device, configs=list(config.configs),
                                  case="study", **overrides)
        (case,) = report["cases"].values()
        outputs = case.get("outputs", {})
        files = [Path(outputs[k]["path"]) for k in DICOM_OUTPUTS if outputs.get(k, {}).get("status") == "written"]
        problems = [f"{k}: {o.get('error') or o.get('reason')}" for k, o in outputs.items()
                    if o["status"] != "written"]
        reason = case.get("error") or ("no DICOM SEG: " + "; ".join(problems) if not files else "; ".join(problems))
        details = {key: case.get(key) for key in ("status", "volumes_ml", "review", "timings_s", "seconds")}
        details["rano_sum_of_products_mm2"] = (case.get("rano") or {}).get("sum_of_products_mm2")
        details["inputs"] = {m: s.get("description") for m, s in case.get("inputs", {}).items()}
        return Outcome(files, reason, details)

    return process


def print_status(config: NodeConfig) -> None:
    jobs = load_jobs(config)
    waiting = [j for j in jobs if j["state"] not in ("delivered", "failed", "skipped")]
    print(f"node {config.aet}: {len(jobs)} job(s), {len(waiting)} not finished")
    for job in jobs[-20:]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.get("finished_at") or job["queued_at"]))
        print(f"  {when}  {job['state']:10s}  study {job.get('study_uid') or job['study']}"
              f"{'  ' + job['reason'] if job.get('reason') else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="monai-iunet-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="node.json")
    parser.add_argument("--status", action="store_true", help="print the queue and the last results, then exit")
    parser.add_argument("--index", type=int, help=argparse.SUPPRESS)  # a worker process (the supervisor starts it)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = NodeConfig.load(args.config)
        if args.status:
            print_status(config)
            return 0
        if args.index is not None:
            credentials = os.environ.get(WORKER_CREDENTIALS_ENV)
            worker = Worker(config, brats_processor(config), tuple(credentials.split(":", 1)) if credentials else None,
                            index=args.index)
            import signal

            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            worker.run()
            return 0
        config.orthanc_executable(), config.plugin("libOrthancPython.so")  # before anything starts
        return run_node(config, [sys.executable, "-m", "monai_iunet.apps.brats.node", "--config",
                                 str(args.config.resolve())])
    except NodeConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The node's Orthanc plugin: it only queues the studies Orthanc calls stable (no new instance for ``StableAge``
seconds) as files for the worker. It runs inside Orthanc's own Python (the orthanc-python plugin), so it uses the
standard library only and never imports the project; everything else happens in the worker's process.

A file per stable study in the folder ``IUNetNode.Incoming`` of Orthanc's configuration, written under a hidden name
and renamed, so that the worker never reads half a file: ``<nanoseconds>-<Orthanc study id>.json`` holding
``{"study": id, "stable_at": seconds since the epoch}``.
"""

import json
import os
import time

import orthanc

INCOMING = json.loads(orthanc.GetConfiguration())["IUNetNode"]["Incoming"]


def queue_stable_study(study: str) -> None:
    os.makedirs(INCOMING, exist_ok=True)
    now = time.time()
    name = f"{time.time_ns():020d}-{study}.json"
    hidden = os.path.join(INCOMING, "." + name)
    with open(hidden, "w") as f:
        json.dump({"study": study, "stable_at": now}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(hidden, os.path.join(INCOMING, name))
    orthanc.LogWarning(f"monai-iunet node: study {study} is stable, queued")


def on_change(change_type, level, resource):
    if change_type == orthanc.ChangeType.STABLE_STUDY:
        queue_stable_study(resource)


orthanc.RegisterOnChangeCallback(on_change)

"""An AI node beside a PACS, on Orthanc (the user's installation): studies arrive over DICOM (C-STORE) or DICOMweb
(STOW-RS), a worker runs an application's processor on each stable study and the results go back into the study and
on to the configured destinations, with nothing lost or sent twice when a peer or a process fails. Task-free: the
application (``apps.brats.node``) supplies the processor and the command."""

from .config import Destination, NodeConfig, NodeConfigError, orthanc_configuration
from .orthanc import Orthanc, OrthancError, OrthancUnavailable
from .supervisor import run_node
from .worker import Outcome, Processor, Worker, load_jobs

__all__ = ["Destination", "NodeConfig", "NodeConfigError", "orthanc_configuration", "Orthanc", "OrthancError",
           "OrthancUnavailable", "run_node", "Outcome", "Processor", "Worker", "load_jobs"]

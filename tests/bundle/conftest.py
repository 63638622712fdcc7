"""The bundle tests' names (shared with other test folders through ``tests/utils.py``)."""

from ..utils import BUNDLE, CT_BUNDLE, ROOT, SCHEMA, TINY, TRAIN_TINY, check, run_bundle, verify_and_export, write_json

__all__ = ["BUNDLE", "CT_BUNDLE", "ROOT", "SCHEMA", "TINY", "TRAIN_TINY", "check", "run_bundle", "verify_and_export",
           "write_json"]

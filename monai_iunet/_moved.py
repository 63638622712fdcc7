"""Module paths of earlier releases, kept working: ``import monai_iunet.transforms``, a config's ``"_target_":
"monai_iunet.transforms.LoadModalitiesd"`` and ``python -m monai_iunet.segment`` reach the module's new home (the
same module object), with a ``DeprecationWarning`` naming it.

One table, ``MOVED``, says what moved where; a finder on ``sys.meta_path`` (installed by ``monai_iunet/__init__``)
serves it, so no file stays behind at an old path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

__all__ = ["MOVED", "install"]

MOVED = {
    "monai_iunet.data.dicom_series": "monai_iunet.dicom.series",
    "monai_iunet.data.series_selection": "monai_iunet.dicom.selection",
    "monai_iunet.data.dicom_seg": "monai_iunet.dicom.seg",
    "monai_iunet.data.dicom": "monai_iunet.dicom.synthetic",
    "monai_iunet.data.synthetic": "monai_iunet.apps.brats.data.synthetic",
    "monai_iunet.data.datalist": "monai_iunet.apps.brats.data.datalist",
    "monai_iunet.data.studies": "monai_iunet.apps.brats.data.studies",
    "monai_iunet.data.foam": "monai_iunet.apps.ct.foam",
    "monai_iunet.data.ct": "monai_iunet.apps.ct.simulation",
    "monai_iunet.transforms": "monai_iunet.apps.brats.transforms",
    "monai_iunet.registration": "monai_iunet.apps.brats.registration",
    "monai_iunet.brain_extraction": "monai_iunet.apps.brats.brain_extraction",
    "monai_iunet.inference": "monai_iunet.apps.brats.inference",
    "monai_iunet.segment": "monai_iunet.apps.brats.segment",
    "monai_iunet.evaluation": "monai_iunet.apps.brats.metrics",
}
# old packages that exist only as parents of moved modules
_OLD_PACKAGES = {"monai_iunet.data"}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str | None) -> None:
        self.new = new

    def create_module(self, spec):
        if self.new is None:
            module = types.ModuleType(spec.name, "Moved: see monai_iunet._moved.MOVED.")
            module.__path__ = []
            return module
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there.", DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass  # the module was executed under its new name

    def get_code(self, name: str):
        """For ``python -m <old name>``: run the new module as ``__main__``."""
        return compile(f"import runpy\nrunpy.run_module({self.new!r}, run_name='__main__', alter_sys=True)\n",
                       f"<{name}: moved to {self.new}>", "exec")


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in MOVED:
            return importlib.machinery.ModuleSpec(name, _Alias(MOVED[name]))
        if name in _OLD_PACKAGES:
            return importlib.machinery.ModuleSpec(name, _Alias(None), is_package=True)
        return None


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (once): it only answers for names no file provides."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

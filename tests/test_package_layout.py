"""The package's layout: imports flow one way (layers/engine → networks → library → apps; nothing imports an
application), the benchmark harness is not installed, and every module path of earlier releases still works."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import monai_iunet
from monai_iunet._moved import MOVED
from monai_iunet.bundle import bundle_parser

PACKAGE = Path(monai_iunet.__file__).resolve().parent
ROOT = PACKAGE.parent
LIBRARY = {"layers", "engine", "networks", "handlers", "dicom", "planner", "export", "bundle"}
# what each part may import from the package (besides itself)
ALLOWED = {
    "layers": set(),
    "engine": {"layers"},
    "networks": {"layers", "engine"},
    "handlers": set(),  # handlers reach a network only through its public methods
    "dicom": set(),
    "planner": {"layers", "engine", "networks", "bundle"},  # bundle: network_def, parsed as a bundle run does
    "export": {"layers", "engine", "networks", "bundle"},
    "bundle": {"layers", "engine", "networks"},
    "_moved": set(),
    "": {"_moved", "layers", "engine", "networks"},  # monai_iunet/__init__.py
    "apps": set(),
    "apps.brats": LIBRARY,
    "apps.ct": LIBRARY,
}


def part_of(module: str) -> str:
    """``monai_iunet.apps.brats.data.synthetic`` → ``apps.brats``; ``monai_iunet.dicom.seg`` → ``dicom``."""
    names = module.split(".")[1:]
    if not names:
        return ""
    return ".".join(names[:2]) if names[0] == "apps" and len(names) > 1 else names[0]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path, package: Path = PACKAGE) -> set[str]:
    """Every ``monai_iunet`` module a file imports, at any depth (also inside functions), relative imports resolved."""
    name = module_name(path, package)
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    modules = {m for m in found if m.split(".")[0] == package.name and _is_module(m, package)}
    return {m for m in modules if not any(other.startswith(m + ".") for other in modules)}  # the most specific


def _is_module(name: str, package: Path) -> bool:
    path = package.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        source = part_of(module_name(path, package))
        for target in sorted(package_imports(path, package)):
            wanted = part_of(target)
            if wanted != source and wanted not in ALLOWED[source]:
                found.append(f"{module_name(path, package)} imports {target}")
    return found


def test_imports_flow_one_way():
    assert violations() == []


def test_the_check_sees_a_wrong_import(tmp_path):
    """The checker itself: a library module importing an application, also relatively and inside a function, and a
    layer importing a network, are each reported; an allowed import is not."""
    package = tmp_path / "monai_iunet"
    for folder in ("layers", "networks", "dicom", "apps/brats"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "apps" / "__init__.py").write_text("")
    (package / "apps" / "brats" / "labels.py").write_text("from ...dicom import seg\n")
    (package / "dicom" / "seg.py").write_text("def f():\n    from ..apps.brats import labels\n")
    (package / "layers" / "base.py").write_text("import monai_iunet.networks\n")
    (package / "networks" / "net.py").write_text("from ..layers import base\n")
    assert violations(package) == ["monai_iunet.dicom.seg imports monai_iunet.apps.brats.labels",
                                   "monai_iunet.layers.base imports monai_iunet.networks"]


def test_benchmark_harness_is_not_in_the_package():
    assert not (PACKAGE / "benchmarking.py").exists()
    assert (ROOT / "scripts" / "benchmarking.py").is_file()


@pytest.mark.parametrize("old, new", sorted(MOVED.items()))
def test_old_module_paths_are_the_moved_modules(old, new):
    with pytest.warns(DeprecationWarning, match=new):
        moved = importlib.import_module(old) if old not in sys.modules else _reimport(old)
    assert moved is importlib.import_module(new)


def _reimport(name: str):
    del sys.modules[name]
    return importlib.import_module(name)


def test_old_config_targets_and_commands_still_work(tmp_path):
    from monai.bundle import ConfigParser

    from monai_iunet.apps.brats.transforms import Spacingd

    config = {"spacing": {"_target_": "monai_iunet.transforms.Spacingd", "keys": "image", "pixdim": 2.0},
              "et": "$monai_iunet.data.datalist.et_label_of(@datalist)", "datalist": str(tmp_path / "d.json"),
              "imports": ["$import monai_iunet", "$import monai_iunet.data.datalist"]}
    (tmp_path / "d.json").write_text(json.dumps({"label_convention": {"naming": "2023", "et_label": 3}}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parser = ConfigParser(config)
        parser.get_parsed_content("imports")  # as monai.bundle run does first
        assert isinstance(parser.get_parsed_content("spacing"), Spacingd)
        assert parser.get_parsed_content("et") == 3
    for old, new in (("monai_iunet.segment", "monai_iunet.apps.brats.segment"),
                     ("monai_iunet.data.ct", "monai_iunet.apps.ct.simulation")):
        result = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, cwd=tmp_path)
        direct = subprocess.run([sys.executable, "-m", new, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == direct.stdout and "usage:" in result.stdout


def test_old_shipped_configs_load_old_checkpoints(tmp_path):
    """The shipped BraTS weights (trained before the move) load through the old ``monai_iunet.bundle.load_weights``
    path as well as the new one, strictly, into the bundle's network."""

    from monai_iunet import bundle
    from monai_iunet.networks import load_weights

    folder = bundle.bundle_path("brats_iunet_segmentation")
    parser = bundle_parser(str(folder / "configs" / "inference.json"))
    network = parser.get_parsed_content("network_def")
    state = torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert bundle.load_weights is load_weights
    load_weights(network, str(folder / "models" / "model.pt"))
    assert all(torch.equal(v, state[k].to(v.dtype)) for k, v in network.state_dict().items() if k in state)

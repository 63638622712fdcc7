"""The package's layout: imports flow one way (layers/engine → networks → library → apps; nothing imports an
application), and the benchmark harness is not installed."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import monai_iunet

PACKAGE = Path(monai_iunet.__file__).resolve().parent
ROOT = PACKAGE.parent
LIBRARY = {"layers", "engine", "networks", "handlers", "dicom", "data", "planner", "measure", "export", "bundle",
           "node"}
# what each part may import from the package (besides itself)
ALLOWED = {
    "layers": set(),
    "engine": {"layers"},
    "networks": {"layers", "engine"},
    "handlers": set(),  # handlers reach a network only through its public methods
    "dicom": set(),
    "node": set(),  # the AI node on Orthanc: an application gives it its processor
    "data": set(),
    "planner": {"layers", "engine", "networks", "bundle"},  # bundle: network_def, parsed as a bundle run does
    "measure": {"layers", "engine", "networks", "bundle"},  # what the planner is checked against
    "export": {"layers", "engine", "networks", "bundle"},
    "bundle": {"layers", "engine", "networks"},
    "": {"layers", "engine", "networks"},  # monai_iunet/__init__.py
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


def external_imports(path: Path) -> set[str]:
    """The top-level names of every absolute import in a file (``monai.deploy.core`` → ``monai.deploy``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
        names |= {".".join(m.split(".")[:2]) if m.startswith("monai.") else m.split(".")[0] for m in modules}
    return names


def test_the_library_does_not_import_the_deploy_sdk():
    """MONAI Deploy lives in its own room (deploy/): no module of the package imports the App SDK or Holoscan, and
    the application imports them (the check sees them)."""
    sdk = {"monai.deploy", "holoscan"}
    assert {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if external_imports(p) & sdk} == set()
    assert external_imports(ROOT / "deploy" / "brats_iunet_app" / "app.py") >= sdk - {"holoscan"}


def test_the_deploy_app_is_the_bundle_version():
    """The MAP's version (app.yaml) is the version of the bundle it serves."""
    import yaml

    app = yaml.safe_load((ROOT / "deploy" / "brats_iunet_app" / "app.yaml").read_text())
    metadata = json.loads((ROOT / "bundles" / "brats_iunet_segmentation" / "configs" / "metadata.json").read_text())
    assert str(app["application"]["version"]) == metadata["version"] and app["resources"]["gpu"] == 0


@pytest.mark.parametrize("bundle", ["brats_iunet_segmentation", "ct_iunet_postprocessing"])
def test_each_bundle_requires_this_package_s_version(bundle):
    """The model zoo's tooling installs from ``required_packages_version``: it must name the version whose config
    names the bundle uses."""
    metadata = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())
    assert metadata["required_packages_version"]["monai-iunet"] == monai_iunet.__version__
    toml = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{monai_iunet.__version__}"' in toml


def test_benchmark_harness_is_not_in_the_package():
    assert not (PACKAGE / "benchmarking.py").exists()
    assert (ROOT / "scripts" / "benchmarking.py").is_file()


@pytest.mark.slow
def test_scoring_imports_neither_the_loaders_nor_registration():
    """``apps.brats.metrics`` scores label maps: it must not drag in the loaders (DICOM, elastix registration) or
    deepbet (MONAI itself imports ITK)."""
    code = ("import sys, monai_iunet.apps.brats.metrics\n"
            "heavy = [m for m in ('monai_iunet.apps.brats.transforms', 'monai_iunet.apps.brats.registration',"
            " 'deepbet', 'highdicom') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

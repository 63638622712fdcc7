"""Development code of the repository, not installed with the package: the demos (``make demo``, ``make demo-ct``),
the benchmark harness (``benchmarking``: one measured training step per fresh process) and the benchmarks, the CT
experiment, the QC flow's training and report, and the BraTS cross-validation report. Run from the repository root
as ``python -m scripts.<name>``; tests import it as ``scripts.<name>``."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
BUNDLE = ROOT / "bundles" / "brats_iunet_segmentation"
CT_BUNDLE = ROOT / "bundles" / "ct_iunet_postprocessing"
DOCS = ROOT / "docs" / "benchmarks"  # where the benchmarks and reports write their tables and figures

"""Development code of the repository, not installed with the package: the demos (``make demo``, ``make demo-ct``),
the benchmark harness (``benchmarking``: one measured training step per fresh process) and the benchmarks, the CT
experiment, the QC flow's training and report, and the BraTS cross-validation report. Run from the repository root
as ``python -m scripts.<name>``; tests import it as ``scripts.<name>``."""

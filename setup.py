"""Packaging beyond pyproject.toml: the bundles (configs, docs, shipped weights) travel inside the wheel as
``monai_iunet/bundles/<name>/``, so that an ordinary ``pip install`` brings them (``monai_iunet.bundle.bundle_path``
finds them there, or in the source tree of a checkout)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["monai_iunet*"]) + ["monai_iunet.bundles"],
    package_dir={"monai_iunet.bundles": "bundles"},
    package_data={"monai_iunet.bundles": ["*/LICENSE", "*/configs/*", "*/docs/*", "*/models/*.pt"]},
)

"""Task-free data utilities for bundle configs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from monai.data import PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Transform

__all__ = ["DiskCached"]


class DiskCached(Transform):
    """A deterministic (dictionary) transform whose result is kept on disk: the first call with an item computes and
    writes it, later calls (later runs, other folds) read it back. The disk part is MONAI's ``PersistentDataset``
    (files keyed by the item and the pickled transforms, written atomically); with ``cache_dir`` None it is the
    transform itself.

    A transform rather than a dataset, so that a bundle's ``train#dataset#data`` stays the datalist (MONAI Label
    and the model zoo's conventions set it) while the in-memory ``CacheDataset`` over it also caches this step.

    Args:
        transform: the deterministic transform, e.g. the loading and resampling ``Compose``.
        cache_dir: where the results go; None: no disk cache.
    """

    def __init__(self, transform: Callable, cache_dir: str | Path | None = None) -> None:
        self.transform = transform
        self.cache_dir = cache_dir
        # the transforms' hash as constructed: transforms may keep state once used (a reader), which must not
        # change the key of later items
        transform_hash = PersistentDataset([], transform, None, hash_transform=pickle_hashing).transform_hash
        self._key = lambda item: pickle_hashing(item) + transform_hash.encode()

    def __call__(self, data: Mapping) -> Mapping:
        if self.cache_dir is None:
            return self.transform(data)
        # one small dataset per item: thread-safe under CacheDataset's threaded filling
        return PersistentDataset([data], self.transform, self.cache_dir, hash_func=self._key)[0]

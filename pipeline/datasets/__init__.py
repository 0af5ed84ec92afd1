"""Dataset registry: raw readers (for ingestion) and synthetic writers (the embedded default).

One entry per dataset the pipeline can ingest. Modules are imported lazily so that the CLI
and config validation stay fast; adding a dataset is one module + one entry + one test.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one dataset.

    Attributes:
        name: registry key, also the CLI name (``hpe ingest 300w_lp``).
        kind: record kind built from it (``headpose`` or ``keypoints``).
        module: module holding the reader.
        list_fn, load_fn: names of ``list_items(raw_root)`` and ``load_item(raw_root, item)``.
        synthetic: key of the synthetic writer that produces this layout.
        splits: for datasets whose index files are per split (COCO-style JSON), the splits to
            list; ``list_items(raw_root, split)`` is then called once per split. ``()`` means
            ``list_items(raw_root)`` lists every split itself.
    """

    name: str
    kind: str
    module: str
    list_fn: str
    load_fn: str
    synthetic: str
    splits: tuple[str, ...] = ()

    def _fn(self, attr: str) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), attr)

    @property
    def list_items(self) -> Callable[..., Any]:
        return self._fn(self.list_fn)

    @property
    def load_item(self) -> Callable[..., Any]:
        return self._fn(self.load_fn)

    def list_all(self, raw_root: Any) -> Any:
        """Every split's listing merged into one :class:`~pipeline.datasets.base.Listing`."""
        from pipeline.datasets.base import Listing

        if not self.splits:
            return self.list_items(raw_root)
        merged = Listing(items=[], rejected=[])
        for split in self.splits:
            part = self.list_items(raw_root, split)
            merged.items += part.items
            merged.rejected += part.rejected
        return merged


@dataclass(frozen=True)
class WriterSpec:
    """A synthetic writer: ``module.write_synthetic(root, **settings, seed=...)``."""

    name: str
    module: str

    def write(self, root: Any, seed: int, **settings: Any) -> dict:
        return importlib.import_module(self.module).write_synthetic(root, seed=seed, **settings)


_HP = "pipeline.datasets"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("300w_lp", "headpose", f"{_HP}.w300lp", "list_items", "load_item", "300w_lp"),
        DatasetSpec("aflw2000", "headpose", f"{_HP}.aflw2000", "list_items", "load_item", "aflw2000"),
        DatasetSpec("biwi_hpdb", "headpose", f"{_HP}.biwi", "list_items_hpdb", "load_item_hpdb", "biwi"),
        DatasetSpec("biwi_npz", "headpose", f"{_HP}.biwi", "list_items_npz", "load_item_npz", "biwi"),
        DatasetSpec("coco", "keypoints", f"{_HP}.coco", "list_items", "load_item", "coco", ("train", "val")),
        DatasetSpec(
            "humanart", "keypoints", f"{_HP}.humanart", "list_items", "load_item", "humanart", ("train", "val")
        ),
    )
}

WRITERS: dict[str, WriterSpec] = {
    spec.name: spec
    for spec in (
        WriterSpec("300w_lp", f"{_HP}.w300lp"),
        WriterSpec("aflw2000", f"{_HP}.aflw2000"),
        WriterSpec("biwi", f"{_HP}.biwi"),
        WriterSpec("coco", f"{_HP}.coco"),
        WriterSpec("humanart", f"{_HP}.humanart"),
    )
}


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}") from None


def get_dataset(name: str) -> DatasetSpec:
    """The reader spec for ``name``; unknown names fail listing the valid ones."""
    return _lookup(DATASETS, name, "dataset")


def get_writer(name: str) -> WriterSpec:
    """The synthetic writer for ``name``; unknown names fail listing the valid ones."""
    return _lookup(WRITERS, name, "synthetic dataset")

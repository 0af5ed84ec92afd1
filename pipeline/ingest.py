"""Ingestion: raw dataset directory → validated, cropped records → Parquet shards + quarantine.

The parallel part (decode, validate, crop per protocol, resize, JPEG-encode) runs as a Ray
Data ``map_batches`` job; ``engine="local"`` runs the very same function in a plain loop
(the benchmark's baseline and a debugging aid). Listing and the final write happen on the
driver so the output is sorted and byte-identical however the work was split.

Output layout (``out``)::

    <split>/part-00000.parquet …   kept records, fixed schema per kind, sorted by source_id
    quarantine.parquet             source_id, split, file, field, reason, units
    filtered.parquet               source_id, split, reason (e.g. test-protocol |angle| > 99°)

Every listed unit ends up in exactly one of the three (checked: in = kept + filtered +
quarantined); the stage fails only when quarantined / in exceeds the error budget.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.atomic import atomic_dir
from pipeline.datasets import DatasetSpec, get_dataset
from pipeline.datasets.base import BadRecord, Item, Rejected

OUTCOME_FIELDS = [
    ("_status", pa.string()),
    ("_q_file", pa.string()),
    ("_q_field", pa.string()),
    ("_q_reason", pa.string()),
    ("_q_units", pa.int32()),
]
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("split", pa.string()),
        ("file", pa.string()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("units", pa.int32()),
    ]
)
FILTERED_SCHEMA = pa.schema([("source_id", pa.string()), ("split", pa.string()), ("reason", pa.string())])


class IngestError(RuntimeError):
    """The bad fraction passed the error budget (the message lists the top reasons)."""


def record_kind(kind: str) -> ModuleType:
    """The record-builder module for a dataset kind (``headpose``)."""
    import importlib

    kinds = {"headpose": "pipeline.records.headpose", "keypoints": "pipeline.records.keypoints"}
    if kind not in kinds:
        raise KeyError(f"unknown record kind {kind!r}; valid: {', '.join(sorted(kinds))}")
    return importlib.import_module(kinds[kind])


@dataclass
class IngestSummary:
    """Counts and timings of one ingest (``counts_in == kept + filtered + quarantined``)."""

    dataset: str
    raw_root: str
    out: str
    engine: str
    counts_in: int
    kept: int
    filtered: int
    quarantined: int
    kept_by_split: dict[str, int]
    quarantine_reasons: dict[str, int]
    filter_reasons: dict[str, int]
    bad_fraction: float
    seconds: float
    ray_startup_seconds: float = 0.0
    shards: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- worker side
def _item_to_row(item: Item) -> dict[str, Any]:
    return {
        "source_id": item.source_id,
        "split": item.split,
        "subset": item.subset,
        "flip": item.flip,
        "extra": json.dumps(item.extra, sort_keys=True),
    }


def _row_to_item(row: dict[str, Any]) -> Item:
    return Item(
        source_id=str(row["source_id"]),
        split=str(row["split"]),
        subset=str(row["subset"]),
        flip=bool(row["flip"]),
        extra=json.loads(row["extra"]),
    )


def process_items(items: list[Item], raw_root: str, dataset: str, ctx: dict) -> pa.Table:
    """Load, validate and encode ``items``; one output row per kept/filtered/quarantined unit.

    Runs inside Ray Data workers (and in the local loop). The result carries the kind's
    record columns plus ``_status`` / ``_q_*`` outcome columns so that one Arrow table
    travels back through the object store.
    """
    spec = get_dataset(dataset)
    kind = record_kind(spec.kind)
    load = spec.load_item
    root = Path(raw_root)
    rows: list[dict[str, Any]] = []

    def bad(sid: str, split: str, file: str, fld: str, reason: str, units: int) -> None:
        rows.append(
            {
                "source_id": sid,
                "split": split,
                "_status": "quarantined",
                "_q_file": file,
                "_q_field": fld,
                "_q_reason": reason,
                "_q_units": units,
            }
        )

    for item in items:
        try:
            sample = load(root, item)
            outcome = kind.build(sample, item, ctx)
        except BadRecord as err:
            bad(item.source_id, item.split, err.file, err.field, err.reason, kind.units(item))
            continue
        except Exception as err:  # a reader bug must not take the whole dataset down silently
            where = traceback.extract_tb(err.__traceback__)[-1]
            reason = f"unexpected {type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})"
            bad(item.source_id, item.split, item.source_id, "<unexpected>", reason, kind.units(item))
            continue
        for row in outcome.rows:
            rows.append({**row, "_status": "kept", "_q_units": 1})
        for sid, reason in outcome.filtered:
            rows.append(
                {"source_id": sid, "split": item.split, "_status": "filtered", "_q_reason": reason, "_q_units": 1}
            )
        for sid, file, fld, reason, units in outcome.quarantined:
            bad(sid, item.split, file, fld, reason, units)
    schema = pa.schema(list(kind.SCHEMA) + OUTCOME_FIELDS)
    return pa.Table.from_pylist(rows, schema=schema)


class _ProcessBatch:
    """Ray Data callable: a batch of listed items (Arrow) → an outcome table."""

    def __init__(self, raw_root: str, dataset: str, ctx: dict):
        self.raw_root, self.dataset, self.ctx = raw_root, dataset, ctx

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [_row_to_item(r) for r in batch.to_pylist()]
        return process_items(items, self.raw_root, self.dataset, self.ctx)


def _run_ray(
    items: list[Item], raw_root: str, dataset: str, ctx: dict, batch_size: int, num_cpus: int | None
) -> tuple[list[pa.Table], float]:
    import ray.data

    from pipeline.raycluster import ray_session

    with ray_session(num_cpus) as startup:
        data_ctx = ray.data.DataContext.get_current()
        data_ctx.enable_progress_bars = sys.stderr.isatty()
        data_ctx.execution_options.preserve_order = True
        # Few, large tasks: each Ray Data task costs scheduling and (de)serialisation, so it
        # should carry ≳ 1 s of work; but at least two per CPU so small datasets still spread
        # over every core and a slow block does not leave a core idle at the end.
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        n_blocks = min(len(items), max(math.ceil(len(items) / batch_size), 2 * cpus))
        batch_size = math.ceil(len(items) / n_blocks)
        ds = ray.data.from_items([_item_to_row(i) for i in items], override_num_blocks=n_blocks)
        fn = _ProcessBatch(raw_root, dataset, ctx)
        # A plain function (tasks, not actors): no per-actor start-up, and each block is
        # processed where it lives.
        ds = ds.map_batches(lambda b: fn(b), batch_format="pyarrow", batch_size=batch_size, num_cpus=1)
        tables = [ray.get(ref) for ref in ds.to_arrow_refs()]
    return tables, startup


def _run_local(items: list[Item], raw_root: str, dataset: str, ctx: dict, batch_size: int) -> list[pa.Table]:
    return [process_items(items[i : i + batch_size], raw_root, dataset, ctx) for i in range(0, len(items), batch_size)]


# ---------------------------------------------------------------- driver side
def _write_shards(table: pa.Table, folder: Path, shard_rows: int, metadata: dict[bytes, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n_shards = max(1, math.ceil(table.num_rows / shard_rows))
    for i in range(n_shards):
        shard = table.slice(i * shard_rows, shard_rows).replace_schema_metadata(metadata)
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(shard, path, compression="zstd")
        paths.append(path)
    return paths


def ingest(
    dataset: str,
    raw_root: str | Path,
    out: str | Path,
    *,
    seed: int,
    crop_margin: tuple[float, float],
    settings: dict,
    engine: str = "ray",
    limit: int | None = None,
) -> IngestSummary:
    """Ingest one dataset directory into Parquet.

    Args:
        dataset: registry name (``300w_lp``, ``aflw2000``, ``biwi_hpdb``, ``biwi_npz``, ``coco``,
            ``humanart``).
        raw_root: directory in the dataset's real layout.
        out: output folder (replaced atomically).
        seed: seed for per-sample random choices (the training crop margin).
        crop_margin: ``(lo, hi)`` face-crop margin k for this dataset.
        settings: the ``ingest`` section of params without ``datasets`` (the record builder
            of the dataset's kind reads the keys it needs; ``error_budget``, ``shard_rows``,
            ``batch_size`` and ``num_cpus`` steer the job).
        engine: ``ray`` (Ray Data) or ``local`` (same work in a plain loop).
        limit: ingest only the first ``limit`` listed items (smoke runs, warm-ups).

    Returns:
        The :class:`IngestSummary`.

    Raises:
        LayoutError: ``raw_root`` is not in the dataset's layout.
        IngestError: quarantined / in exceeds ``settings["error_budget"]`` (nothing written).
    """
    t0 = time.perf_counter()
    spec: DatasetSpec = get_dataset(dataset)
    kind = record_kind(spec.kind)
    raw_root, out = Path(raw_root), Path(out)
    listing = spec.list_all(raw_root)
    if limit is not None:
        listing.items, listing.rejected = listing.items[:limit], listing.rejected[:0]
    ctx = {**settings, "dataset": dataset, "seed": seed, "crop_margin": tuple(crop_margin)}
    startup = 0.0
    if not listing.items:
        tables = []
    elif engine == "ray":
        tables, startup = _run_ray(
            listing.items, str(raw_root), dataset, ctx, settings["batch_size"], settings.get("num_cpus")
        )
    elif engine == "local":
        tables = _run_local(listing.items, str(raw_root), dataset, ctx, settings["batch_size"])
    else:
        raise ValueError(f"unknown engine {engine!r}; valid: local, ray")
    result_schema = pa.schema(list(kind.SCHEMA) + OUTCOME_FIELDS)
    result = pa.concat_tables(tables) if tables else result_schema.empty_table()

    status = result.column("_status").to_pylist()

    def where(value: str) -> pa.Array:
        return pa.array([i for i, s in enumerate(status) if s == value], type=pa.int64())

    kept_idx, filt_idx, quar_idx = where("kept"), where("filtered"), where("quarantined")

    kept = result.take(kept_idx).select(kind.SCHEMA.names).cast(kind.SCHEMA)
    order = [("split", "ascending"), ("source_id", "ascending")]
    if "annotation_id" in kept.column_names:  # several person rows per image
        order.append(("annotation_id", "ascending"))
    kept = kept.sort_by(order)
    filtered = result.take(filt_idx).select(["source_id", "split", "_q_reason"]).rename_columns(FILTERED_SCHEMA.names)
    quarantine = _listing_rejects(listing.rejected)
    if len(quar_idx):
        q = result.take(quar_idx).select(["source_id", "split", "_q_file", "_q_field", "_q_reason", "_q_units"])
        quarantine = pa.concat_tables([quarantine, q.rename_columns(QUARANTINE_SCHEMA.names).cast(QUARANTINE_SCHEMA)])
    quarantine = quarantine.sort_by([("source_id", "ascending"), ("field", "ascending")])
    filtered = filtered.sort_by([("source_id", "ascending")])

    counts_in = sum(kind.units(i) for i in listing.items) + sum(r.units for r in listing.rejected)
    n_quar = sum(quarantine.column("units").to_pylist())
    n_filt = filtered.num_rows
    if counts_in != kept.num_rows + n_filt + n_quar:  # an invariant, not user input: a bug if it fails
        raise AssertionError(
            f"{dataset}: {counts_in} in != {kept.num_rows} kept + {n_filt} filtered + {n_quar} quarantined"
        )
    bad_fraction = n_quar / counts_in if counts_in else 0.0
    q_reasons = Counter(
        f"{f}: {r}" if len(r) < 80 else f"{f}: {r[:77]}..."
        for f, r in zip(quarantine.column("field").to_pylist(), quarantine.column("reason").to_pylist(), strict=True)
    )
    if counts_in == 0:
        raise IngestError(f"{raw_root}: no {dataset} samples found")
    if bad_fraction > settings["error_budget"]:
        examples = "\n".join(
            f"  {row['file']}: {row['field']}: {row['reason']}" for row in quarantine.slice(0, 5).to_pylist()
        )
        raise IngestError(
            f"{dataset}: {n_quar} of {counts_in} records ({bad_fraction:.1%}) are bad, over the error budget "
            f"of {settings['error_budget']:.1%} (ingest.error_budget in params.yaml); nothing was written.\n"
            f"First bad records:\n{examples}"
        )

    metadata = {
        b"hpe.schema": kind.KIND.encode(),
        b"hpe.schema_version": kind.SCHEMA_VERSION.encode(),
        b"hpe.dataset": dataset.encode(),
    }
    shards: list[Path] = []
    with atomic_dir(out) as tmp:
        for split in sorted(set(kept.column("split").to_pylist())):
            part = kept.filter(pc.equal(kept.column("split"), split))
            shards += [
                out / p.relative_to(tmp) for p in _write_shards(part, tmp / split, settings["shard_rows"], metadata)
            ]
        pq.write_table(quarantine.replace_schema_metadata(metadata), tmp / "quarantine.parquet")
        pq.write_table(filtered.replace_schema_metadata(metadata), tmp / "filtered.parquet")

    return IngestSummary(
        dataset=dataset,
        raw_root=str(raw_root),
        out=str(out),
        engine=engine,
        counts_in=counts_in,
        kept=kept.num_rows,
        filtered=n_filt,
        quarantined=n_quar,
        kept_by_split=dict(Counter(kept.column("split").to_pylist())),
        quarantine_reasons=dict(q_reasons.most_common()),
        filter_reasons=dict(Counter(filtered.column("reason").to_pylist()).most_common()),
        bad_fraction=bad_fraction,
        seconds=time.perf_counter() - t0,
        ray_startup_seconds=startup,
        shards=[str(p) for p in shards],
    )


def _listing_rejects(rejected: list[Rejected]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "source_id": r.source_id,
                "split": r.split,
                "file": r.file,
                "field": r.field,
                "reason": r.reason,
                "units": r.units,
            }
            for r in rejected
        ],
        schema=QUARANTINE_SCHEMA,
    )


def read_records(folder: str | Path, split: str | None = None) -> pa.Table:
    """Read the kept records of an ingested dataset (all splits, or one)."""
    folder = Path(folder)
    parts = sorted((folder / split).glob("*.parquet") if split else folder.glob("*/part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"{folder}: no Parquet shards{f' for split {split!r}' if split else ''}")
    return pa.concat_tables([pq.read_table(p) for p in parts])

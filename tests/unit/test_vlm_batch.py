"""How the evaluation's question table is cut into Ray Data blocks (one per actor is not enough)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.evaluate.vlm_batch import _blocks


@pytest.mark.parametrize(
    ("rows", "batch", "workers"), [(1948, 32, 2), (1948, 32, 1), (10, 32, 4), (64, 32, 2), (0, 8, 2)]
)
def test_blocks_cover_every_row_once_in_whole_batches(rows, batch, workers):
    table = pa.table({"row": list(range(rows))})
    blocks = _blocks(table, batch, workers)
    assert pa.concat_tables(blocks).column("row").to_pylist() == list(range(rows))
    assert all(b.num_rows % batch == 0 for b in blocks[:-1])  # only the last batch is short
    if rows >= 4 * workers * batch:
        assert len(blocks) >= 2 * workers  # every actor gets work

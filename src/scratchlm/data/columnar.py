"""Columnar inputs read through pyarrow: Parquet files and Hugging Face datasets saved
on disk (``datasets.Dataset.save_to_disk``). Both hold whole documents in one string
column, read a batch of rows at a time. pyarrow and datasets are optional (``pip install
'scratchlm[data]'``) and imported only when such an input is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from scratchlm.data.readers import import_optional
from scratchlm.errors import DataError

# Rows taken from a Parquet file or a Hugging Face dataset at a time.
ROW_BATCH = 1024


def parquet_text_column(path: Path, text_field: str) -> None:
    """Check that a Parquet file opens and has a string column ``text_field``."""
    pq = import_optional("pyarrow.parquet", "Parquet files")
    import pyarrow as pa  # an optional extra, installed: import_optional just found it

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path} is not a readable Parquet file ({e})") from None
    if text_field not in schema.names:
        names = ", ".join(map(repr, schema.names[:20]))
        raise DataError(
            f"{path} has no column {text_field!r} (columns: {names}); pass --text-field NAME"
        )
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{path}: column {text_field!r} holds {kind}, not strings")


def parquet_pieces(path: Path, *, text_field: str) -> Iterator[tuple[str, bool]]:
    """Parquet: the string column ``text_field``, read a row group batch at a time."""
    pq = import_optional("pyarrow.parquet", "Parquet files")
    import pyarrow as pa  # an optional extra, installed: import_optional just found it

    try:
        for batch in pq.ParquetFile(path).iter_batches(ROW_BATCH, columns=[text_field]):
            for value in batch.column(0).to_pylist():
                yield ("" if value is None else value), True
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read the Parquet file ({e})") from None


def load_hf_dataset(path: Path, text_field: str) -> Any:
    """Open a Hugging Face dataset saved with ``save_to_disk`` (memory-mapped, not read)
    and check that it has a string column ``text_field``."""
    datasets = import_optional("datasets", "Hugging Face datasets")
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable Hugging Face dataset ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        first = next(iter(ds), "train")
        raise DataError(
            f"{path} holds several splits ({', '.join(ds)}): point at one of them, "
            f"e.g. {path / first}"
        )
    if text_field not in ds.column_names:
        names = ", ".join(map(repr, ds.column_names[:20]))
        raise DataError(
            f"{path} has no column {text_field!r} (columns: {names}); pass --text-field NAME"
        )
    kind = getattr(ds.features[text_field], "dtype", None)
    if kind not in ("string", "large_string"):
        raise DataError(f"{path}: column {text_field!r} holds {kind or 'records'}, not strings")
    return ds


def hf_pieces(path: Path, *, text_field: str) -> Iterator[tuple[str, bool]]:
    """A Hugging Face dataset on disk: the string column ``text_field``, in row order."""
    ds = load_hf_dataset(path, text_field).select_columns([text_field])
    for batch in ds.iter(batch_size=ROW_BATCH):
        for value in batch[text_field]:
            yield ("" if value is None else value), True

"""Reading datasets through HF ``datasets``: a hub name, or a local parquet / JSON-lines file or folder.

``open_rows`` gives the raw rows with images left undecoded, so that a corrupt image is one
bad row (reported with its position), not a crash in the middle of an epoch. A task's
format converts each row to a ``Sample``; ``Loaded`` applies the source's ``on_error``
policy and keeps the counts. Where a path points:
- a ``.parquet`` / ``.jsonl`` / ``.json`` file: that file;
- a folder holding ``metadata.jsonl`` or ``metadata.csv``: an image folder (HF ``imagefolder``);
- another folder: its ``.parquet`` / ``.jsonl`` files named for the split (``test.jsonl``,
  ``data/test-*.parquet`` as the hub lays them out), else every such file at its top level
  unless named for another split (``.json`` files in a folder are manifests, not data);
- anything else of the form ``owner/name``: the hub (needs a network).
Large datasets stream (``streaming``), and ``num_shards`` / ``shard_index`` give each
reader its own part (``datasets.distributed.split_dataset_by_node``).
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import datasets
from datasets.distributed import split_dataset_by_node
from PIL import Image

from vlrl.config import TaskConfig
from vlrl.task import DataError, OnError, RowErrors, open_task
from vlrl.types import Sample

INDEX_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
SPLIT_NAMES = {"train", "test", "val", "validation", "dev"}  # files named for another split are never a fallback
ID_FIELDS = ("id", "qa_id", "figure_id", "imgname", "file_name")


@dataclass(frozen=True)
class Source:
    """Rows of one dataset split, undecoded; ``base`` is where relative image paths start."""

    name: str
    rows: Iterable[dict[str, Any]]
    base: Path


def open_rows(path: str, split: str = "train", streaming: bool = False, num_shards: int = 1, shard_index: int = 0,
              shuffle_seed: int | None = None) -> Source:
    """The rows of ``split`` at ``path`` (see the module docstring for what a path may be)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards), got {shard_index} of {num_shards}")
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per cached file is noise in a training log
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # datasets' notes about caches and resolving files
            ds, base = _load(path, split, streaming)
            ds = _undecoded(ds)
    finally:
        if bars:
            datasets.enable_progress_bars()
    if shuffle_seed is not None:
        ds = ds.shuffle(seed=shuffle_seed)
    if num_shards > 1:
        ds = split_dataset_by_node(ds, rank=shard_index, world_size=num_shards)
    name = f"{path}[{split}]" + (f" shard {shard_index}/{num_shards}" if num_shards > 1 else "")
    return Source(name, ds, base)


def _load(path: str, split: str, streaming: bool) -> tuple[Any, Path]:
    local = Path(path).expanduser()
    if local.exists():
        builder, kwargs, base = _local(local, split)
        try:
            return datasets.load_dataset(builder, split="train", streaming=streaming, **kwargs), base
        except datasets.exceptions.DatasetGenerationError as e:  # e.g. a line that is not JSON
            raise DataError(f"{path}: cannot read the index ({e.__cause__ or e})") from None
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        try:
            return datasets.load_dataset(path, split=split, streaming=streaming), Path(".")
        except Exception as e:  # offline, unknown name, missing split: one message for all
            raise DataError(f"cannot load {path!r} split {split!r} from the Hugging Face hub ({e}); "
                            "download it and pass the local folder or file") from None
    raise FileNotFoundError(f"dataset {path!r} is neither a local file or folder nor a hub name owner/name")


def _local(path: Path, split: str) -> tuple[str, dict[str, Any], Path]:
    if path.is_file():
        builder = INDEX_SUFFIXES.get(path.suffix)
        if builder is None:
            raise ValueError(f"{path}: not a dataset index (expected one of {sorted(INDEX_SUFFIXES)})")
        return builder, {"data_files": [str(path)]}, path.parent
    if (path / "metadata.jsonl").is_file() or (path / "metadata.csv").is_file():
        return "imagefolder", {"data_dir": str(path)}, path
    files = [f for f in sorted(path.rglob("*")) if f.suffix in (".parquet", ".jsonl") and f.is_file()]
    named = [f for f in files if f.stem == split or f.stem.startswith(f"{split}-") or f.parent.name == split]
    chosen = named or [f for f in files if f.parent == path and f.stem.split("-")[0] not in SPLIT_NAMES]
    if not chosen:
        raise FileNotFoundError(f"{path}: no .parquet / .jsonl index file for split {split!r}")
    builders = {INDEX_SUFFIXES[f.suffix] for f in chosen}
    if len(builders) > 1:
        raise ValueError(f"{path}: split {split!r} mixes index formats: {[f.name for f in chosen]}")
    return builders.pop(), {"data_files": [str(f) for f in chosen]}, path


def _undecoded(ds: Any) -> Any:
    """The same dataset with every image column left as ``{bytes, path}``, decoded per row later."""
    if isinstance(ds, datasets.IterableDataset):
        return ds.decode(False)
    for name, feature in (ds.features or {}).items():
        plain = _plain_feature(feature)
        if plain is not feature:
            ds = ds.cast_column(name, plain)
    return ds


def _plain_feature(feature: Any) -> Any:
    if isinstance(feature, datasets.Image) and feature.decode:
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List):
        inner = _plain_feature(feature.feature)
        return feature if inner is feature.feature else datasets.List(inner)
    return feature


def load_image(value: Any, base: Path) -> Image.Image:
    """An RGB image from what datasets store: bytes, ``{bytes, path}``, a path, or a PIL image."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    data, where = None, None
    if isinstance(value, dict):
        data, where = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = value
    elif isinstance(value, str):
        where = value
    if data is None and where:
        file = Path(where) if Path(where).is_absolute() else base / where
        if not file.is_file():
            raise DataError(f"image file {str(file)!r} does not exist", problem="missing image file")
        data = file.read_bytes()
    if not data:
        raise DataError(f"no image (got {type(value).__name__})", problem="missing image")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as e:
        raise DataError(f"cannot read image {where or ''} ({e})".replace("  ", " "), problem="corrupt image") from None
    return image.convert("RGB")


def row_id(row: dict[str, Any], position: int) -> str:
    """How a message names a row: its position, and its id when it has one."""
    for key in ID_FIELDS:
        if row.get(key) not in (None, ""):
            return f"{position} ({key} {row[key]!r})"
    return str(position)


Convert = Callable[[dict[str, Any], "Loaded", int], Sample]


@dataclass
class Loaded:
    """The samples of a source; rows that cannot be converted go through ``errors`` (fail or skip-and-count)."""

    source: Source
    convert: Convert
    errors: RowErrors = field(init=False)
    on_error: OnError = "fail"
    limit: int = 0  # 0: every row
    rows_read: int = 0
    notes: Counter = field(default_factory=Counter)  # repairs made on the way, e.g. boxes clamped to the image

    def __post_init__(self) -> None:
        self.errors = RowErrors(self.source.name, self.on_error)

    def __iter__(self) -> Iterator[Sample]:
        yielded = 0
        for position, row in enumerate(self.source.rows):
            if self.limit and yielded >= self.limit:
                return
            self.rows_read += 1
            try:
                sample = self.convert(row, self, position)
            except DataError as e:
                self.errors.handle(row_id(row, position), e)
                continue
            yielded += 1
            yield sample


def detect_format(columns: Sequence[str]) -> str:
    """Which built-in loader task (``chartqa``, ``refocus``, ``tablevqa``) reads rows with these columns."""
    keys = set(columns)
    if keys & {"figure_id", "x_values", "y_values", "x_values_bbox", "y_values_bbox"}:
        return "refocus"
    if keys & {"qa_id", "gt", "figure_path"}:
        return "tablevqa"
    if "query" in keys and "label" in keys:
        return "chartqa"
    raise ValueError(f"cannot tell the format of a dataset with columns {sorted(keys)}; "
                     "pass --format chartqa, refocus or tablevqa")


def open_dataset(path: str, fmt: str = "auto", split: str = "", seed: int = 0, **args: Any) -> tuple[str, Loaded]:
    """The loader's name and the samples of a dataset file, folder or hub name (``fmt``, or told by its columns)."""
    if fmt == "auto":
        first = next(iter(open_rows(path, split or "test").rows), None)
        if first is None:
            raise ValueError(f"{path}: the dataset has no rows")
        fmt = detect_format(list(first))
    args["path"] = path
    if split:
        args["split"] = split
    samples, _ = open_task(TaskConfig(name=fmt, args=args), seed)
    if not isinstance(samples, Loaded):
        raise ValueError(f"format {fmt!r} is not a dataset loader (chartqa, refocus, tablevqa)")
    return fmt, samples

"""Reading labelled text from delimited files, JSONL and Parquet, and fetching a data set on request."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from components.errors import LifecycleError


log = logging.getLogger(__name__)


class DataError(LifecycleError):
    """Bad input data: the message names the file, row or field and what was expected."""


@dataclass(frozen=True)
class TableFormat:
    format: str = "auto"  # auto | delimited | jsonl | parquet
    separator: str = ","
    header: bool = True
    column_names: Optional[list[str]] = None
    quoting: bool = True
    encoding: str = "utf-8"


def detect_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    return "delimited"


def format_of(path: str | Path, fmt: TableFormat) -> TableFormat:
    """A JSONL or Parquet file (by its suffix) is read as such; any other file with the configured format."""
    return TableFormat() if detect_format(Path(path), "auto") != "delimited" else fmt


def read_source(uri: str, fmt: TableFormat, scratch_dir: str | Path) -> pd.DataFrame:
    """read_table for a file or storage URI: a remote file is first copied into scratch_dir; errors name the URI."""
    from components.storage import fetch_file

    return read_table(fetch_file(uri, scratch_dir), fmt, name=str(uri))


def read_table(path: str | Path, fmt: TableFormat, name: Optional[str] = None) -> pd.DataFrame:
    """Read one file into a DataFrame of strings; index = the 1-based line (or row) number in the file. Errors
    name the file as `name` (its URI) where given."""
    path = Path(path)
    where = name or path
    if not path.is_file():
        raise DataError(f"{where}: no such file")
    kind = detect_format(path, fmt.format)
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        elif kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, encoding=fmt.encoding)
        else:
            frame = _read_delimited(path, fmt, where)
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not valid {fmt.encoding} text at byte {err.start}; set data.encoding") from None
    except pd.errors.ParserError as err:
        raise DataError(
            f"{where}: cannot parse as {kind} data: {str(err).strip()}. "
            f"Check data.separator (now {fmt.separator!r}), data.quoting (now {fmt.quoting}) and data.header"
        ) from None
    except ValueError as err:  # pandas' JSON and Parquet readers raise plain ValueErrors
        raise DataError(f"{where}: cannot read as {kind}: {err}") from None
    first_row = 2 if (kind == "delimited" and fmt.header) else 1
    frame.index = pd.RangeIndex(first_row, first_row + len(frame), name="row")
    # Labels may be numbers in JSONL/Parquet; compare them as the strings the config names.
    return frame.apply(lambda col: col.map(lambda v: v if v is None or isinstance(v, str) or pd.isna(v) else str(v)))


def _read_delimited(path: Path, fmt: TableFormat, where) -> pd.DataFrame:
    if not fmt.header and not fmt.column_names:
        raise DataError(f"{where}: a file without a header needs data.column_names")
    return pd.read_csv(
        path,
        sep=fmt.separator,
        header=0 if fmt.header else None,
        names=None if fmt.header else fmt.column_names,
        quoting=csv.QUOTE_MINIMAL if fmt.quoting else csv.QUOTE_NONE,
        dtype=str,
        keep_default_na=False,  # the text "NA" is a message, not a missing value
        na_values=[],
        encoding=fmt.encoding,
        engine="c",
    )


def fetch(url: str, cache_dir: str | Path, sha256: Optional[str] = None, member: Optional[str] = None) -> Path:
    """Download `url` once into cache_dir (a zip's `member` is extracted) and check its sha256."""
    cache_dir = Path(cache_dir)
    target = cache_dir / (member or Path(url).name)
    if target.is_file() and (sha256 is None or file_sha256(target) == sha256):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()
    except OSError as err:
        raise DataError(f"cannot download {url}: {err}. Download it yourself and set data.path") from None
    partial = target.with_suffix(target.suffix + ".part")
    if member:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as archive, archive.open(member) as src:
                with open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as err:
            raise DataError(f"{url}: expected a zip holding {member!r}: {err}") from None
    else:
        partial.write_bytes(payload)
    if sha256 and file_sha256(partial) != sha256:
        partial.unlink()
        raise DataError(f"{url}: sha256 of {target.name} is not the expected {sha256}; the download is not trusted")
    partial.replace(target)
    return target


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

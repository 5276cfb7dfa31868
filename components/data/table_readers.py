"""Reading labelled text from delimited files, JSONL and Parquet, and fetching a data set on request."""

from __future__ import annotations

import csv
import io
import logging
import re
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from components.errors import LifecycleError
from components.skipped_records import SkippedRecords
from components.storage import file_sha256

FEEDBACK = "feedback"  # the source names of feedback files start with this

if TYPE_CHECKING:
    from components.config import DataConfig

log = logging.getLogger(__name__)


class DataError(LifecycleError):
    """Bad input data: the message names the file, row or field and what was expected."""


@dataclass(frozen=True)
class TableFormat:
    format: str = "auto"  # auto | delimited | jsonl | parquet
    separator: str = ","
    header: bool = True
    column_names: list[str] | None = None
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


UNDECODED = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of bytes not in the encoding


def read_source(
    uri: str, fmt: TableFormat, scratch_dir: str | Path, skipped: SkippedRecords | None = None
) -> pd.DataFrame:
    """read_table for a file or storage URI: a remote file is first copied into scratch_dir; errors name the URI."""
    from components.storage import fetch_file

    return read_table(fetch_file(uri, scratch_dir), fmt, name=str(uri), skipped=skipped)


def read_table(
    path: str | Path, fmt: TableFormat, name: str | None = None, skipped: SkippedRecords | None = None
) -> pd.DataFrame:
    """One file as a DataFrame of strings; index = the 1-based line where each row starts (the row, in Parquet).
    Damaged records (a line that is not JSON or not in the encoding, a row with the wrong number of fields) are
    skipped and counted in `skipped`; a DataError when nothing usable is left. Errors name the file as `name`."""
    path = Path(path)
    where = name or path
    if not path.is_file():
        raise DataError(f"{where}: no such file")
    skipped = skipped or SkippedRecords()
    kind = detect_format(path, fmt.format)
    before = skipped.records
    if kind == "parquet":
        frame = _read_parquet(path, where)
    else:
        try:
            text = path.read_bytes().decode(fmt.encoding, errors="surrogateescape").removeprefix("\ufeff")
        except UnicodeError as err:
            raise DataError(f"{where}: cannot decode as {fmt.encoding}: {err}; set data.encoding") from None
        read = _jsonl_rows if kind == "jsonl" else _delimited_rows
        frame = read(text, fmt, where, skipped)
    damaged = skipped.records - before
    if damaged and frame.empty:
        raise DataError(
            f"{where}: nothing usable: all {damaged} records are damaged, e.g. {skipped.examples[-1]}. "
            f"Check data.format and data.encoding (now {fmt.encoding})"
        )
    repeated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if repeated:
        raise DataError(f"{where}: the column name(s) {repeated} appear more than once; columns {list(frame.columns)}")
    frame.index.name = "row"
    # Labels may be numbers in JSONL/Parquet; compare them as the strings the config names. Lists and objects (a
    # chat's messages) stay as they are.
    return frame.apply(lambda col: col.map(_text_or_structure))


def _text_or_structure(value):
    value = value.tolist() if hasattr(value, "tolist") else value  # Parquet's lists arrive as numpy arrays
    return value if value is None or isinstance(value, (str, list, dict)) or pd.isna(value) else str(value)


def _read_parquet(path: Path, where) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{where}: not a readable Parquet file: {err}") from None
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def _jsonl_rows(text: str, fmt: TableFormat, where, skipped: SkippedRecords) -> pd.DataFrame:
    array = text.lstrip().startswith("[")
    records = list(
        json_array_records(text, fmt.encoding, where, skipped)
        if array
        else jsonl_records(text, fmt.encoding, where, skipped)
    )
    return pd.DataFrame([r for _, r in records], index=[n for n, _ in records]) if records else pd.DataFrame()


def json_array_records(text: str, encoding: str, where, skipped: SkippedRecords):
    """(line, object) for each object of a JSON array (a .json file as json.dump writes a list of records); an
    element that is not an object is skipped. A file that is not one whole JSON array is refused, naming the line."""
    import json

    decoder, position, line, counted = json.JSONDecoder(), text.index("[") + 1, 1, 0
    while True:
        position = re.compile(r"[\s,]*").match(text, position).end()
        line, counted = line + text.count("\n", counted, position), position  # counted once, not from the start
        if position < len(text) and text[position] == "]" and not text[position + 1 :].strip():
            return
        try:
            start = position
            record, position = decoder.raw_decode(text, position)
        except ValueError as err:
            raise DataError(f"{where}: line {line}: not JSON ({err}); expected a JSON array of objects") from None
        why = _not_decoded(text[start:position], encoding) or (
            "" if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
        )
        if why:
            skipped.record(where, line, why)
        else:
            yield line, record


def jsonl_records(text: str, encoding: str, where, skipped: SkippedRecords):
    """(line, object) for each line of JSON Lines text that holds a JSON object; other lines are skipped
    (blank lines silently). `text` was decoded with errors="surrogateescape"."""
    import json

    undecoded = bool(_not_decoded(text, encoding))
    # Lines end at "\n" only: a JSON string may hold U+2028 or U+0085 unescaped, which splitlines() would split.
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        why = _not_decoded(content, encoding) if undecoded else ""
        if not why:
            try:
                record = json.loads(content)
                why = "" if isinstance(record, dict) else f"expected a JSON object, got {type(record).__name__}"
            except ValueError as err:
                why = f"not JSON ({err})"
        if why:
            skipped.record(where, line, why)
        else:
            yield line, record


def _delimited_rows(text: str, fmt: TableFormat, where, skipped: SkippedRecords) -> pd.DataFrame:
    """The csv module, strict, rather than pandas' parser: it keeps a NUL inside a text (pandas cuts the text
    there) and says which line a problem is on."""
    if not fmt.header and not fmt.column_names:
        raise DataError(f"{where}: a file without a header needs data.column_names")
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=fmt.separator,
        strict=True,
        quoting=csv.QUOTE_MINIMAL if fmt.quoting else csv.QUOTE_NONE,
    )
    names, rows, lines = (None if fmt.header else list(fmt.column_names)), [], []
    widths: dict[int, int] = {}  # field count -> rows, of the rows with the wrong count
    undecoded = bool(_not_decoded(text, fmt.encoding))
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            if str(err) == "unexpected end of data":
                raise DataError(
                    f"{where}: line {start}: a quote opened in this row is never closed (the file ends "
                    f"inside it). Set data.quoting=false if quote characters are plain text in this "
                    f"file"
                ) from None
            hint = "; set data.quoting=false if quote characters are plain text" if '"' in str(err) else ""
            skipped.record(where, start, f"{err}{hint}")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not fields:
            continue  # a blank line
        why = _not_decoded(fmt.separator.join(fields), fmt.encoding) if undecoded else ""
        if names is None and not why:
            names = fields
        elif why:
            skipped.record(where, line, why)
        elif len(fields) != len(names):
            widths[len(fields)] = widths.get(len(fields), 0) + 1
            skipped.record(where, line, f"{len(fields)} fields for the {len(names)} column names {names}")
        else:
            rows.append(fields)
            lines.append(line)
    if widths and not rows:
        counts = ", ".join(f"{n} rows have {width} fields" for width, n in sorted(widths.items()))
        raise DataError(
            f"{where}: no row has the {len(names)} fields of the column names {names}: {counts}. "
            f"Check data.separator (now {fmt.separator!r}), data.header (now {fmt.header}), "
            f"data.column_names and data.quoting (now {fmt.quoting})"
        )
    return pd.DataFrame(rows, columns=names, index=lines, dtype=object) if names else pd.DataFrame()


def _not_decoded(content: str, encoding: str) -> str:
    """Why decoded text holds bytes that are not in the encoding (surrogate escapes), or ''."""
    bad = UNDECODED.search(content)
    return f"not valid {encoding} text (byte 0x{ord(bad.group()) - 0xDC00:02x})" if bad else ""


def fetch(url: str, cache_dir: str | Path, sha256: str | None = None, member: str | None = None) -> Path:
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
            with (
                zipfile.ZipFile(io.BytesIO(payload)) as archive,
                archive.open(member) as src,
                open(partial, "wb") as dst,
            ):
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


def resolve_sources(data: DataConfig, cache_dir: str | Path) -> dict[str, str]:
    """The files to read, by name ("all", or "train", "val", "test", and "feedback-..." for each file of
    data.feedback_path), as URIs or paths."""
    if data.train_path:
        sources = {"train": data.train_path, "test": data.test_path} | ({"val": data.val_path} if data.val_path else {})
    elif data.path:
        sources = {"all": data.path}
    else:
        sources = {"all": str(fetch(data.url, cache_dir, sha256=data.sha256, member=data.url_member))}
    return sources | {f"{FEEDBACK}-{Path(uri).stem}": uri for uri in feedback_files(data.feedback_path)}


def feedback_files(feedback_path: str | None) -> list[str]:
    """The feedback file, or the files in the feedback folder (sorted; hidden files skipped), as URIs."""
    from components import storage

    if not feedback_path:
        return []
    if storage.is_folder(feedback_path):
        return storage.list_files(feedback_path)
    if not storage.exists(feedback_path):
        raise DataError(f"data.feedback_path: {feedback_path} is neither a file nor a folder")
    return [feedback_path]


def table_format(data: DataConfig) -> TableFormat:
    return from_data_config(TableFormat, data)


def from_data_config(kind, config: DataConfig):
    """A dataclass of plain values from the data config's keys of the same names."""
    import dataclasses

    names = set(type(config).model_fields)
    return kind(**{f.name: getattr(config, f.name) for f in dataclasses.fields(kind) if f.name in names})

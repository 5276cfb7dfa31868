"""Files at storage URIs, through fsspec: plain paths, file://, s3://, gs://, abfs://, https:// (reading) and any
other fsspec protocol. What one task or process leaves for another (data, checkpoints, the prediction log) lives at
such a URI, never on a disk only one pod sees. Cloud back-ends are extras: pip install "llm-lifecycle[s3]"."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from components.errors import LifecycleError

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "abfs": "azure", "abfss": "azure", "az": "azure"}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a local file, read a megabyte at a time (a download, a data file, model weights)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class StorageError(LifecycleError):
    """A storage URI that cannot be read or written: names the URI and why."""


def filesystem(uri: str):
    """(fsspec file system, path inside it) for a URI or a plain path."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(str(uri))
    except ImportError as err:
        protocol = str(uri).split("://", 1)[0]
        extra = EXTRAS.get(protocol)
        hint = f'pip install "llm-lifecycle[{extra}]"' if extra else str(err)
        raise StorageError(f"{uri}: no file system for {protocol}:// is installed ({hint})") from None
    except ValueError as err:
        raise StorageError(f"{uri}: not a storage URI fsspec knows: {err}") from None


def local_path(uri: str) -> Path | None:
    """The path on this machine for a plain path or a file:// URI, else None (the data lives elsewhere)."""
    uri = str(uri)
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


@contextlib.contextmanager
def errors_named(uri: str, doing: str) -> Iterator[None]:
    """Turn a file system's failure (missing object, bucket or credentials) into a StorageError naming the URI."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such file or folder (while {doing})") from None
    except PermissionError as err:
        raise StorageError(f"{uri}: permission denied while {doing}: {err}") from None
    except Exception as err:  # each back-end has its own errors (credentials, network, bucket names)
        raise StorageError(f"{uri}: cannot {doing}: {type(err).__name__}: {err}") from None


def fresh(uri: str):
    """filesystem(uri) with its listings of `uri` forgotten: s3fs and others keep listings, and the objects other
    processes wrote since (the prediction log's shards) would stay unseen by a process that runs for long."""
    fs, path = filesystem(uri)
    fs.invalidate_cache(path)
    return fs, path


def exists(uri: str) -> bool:
    fs, path = fresh(uri)
    with errors_named(uri, "checking it exists"):
        return fs.exists(path)


def is_folder(uri: str) -> bool:
    fs, path = fresh(uri)
    with errors_named(uri, "reading it"):
        return fs.isdir(path)


def list_files(uri: str, pattern: str = "*") -> list[str]:
    """The files directly in a folder URI that match `pattern`, sorted, hidden files skipped, as URIs."""
    fs, path = fresh(uri)
    with errors_named(uri, "listing it"):  # one listing, not a request per file (an object store bills each)
        found = fs.glob(f"{path.rstrip('/')}/{pattern}", detail=True)
    files = [p for p, info in found.items() if info.get("type") == "file" and not Path(p).name.startswith(".")]
    return [join(uri, Path(p).name) for p in sorted(files)]


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with errors_named(uri, "reading it"):
        return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one whole object (object stores have no append); local parent folders are created."""
    fs, path = filesystem(uri)
    with errors_named(uri, "writing it"):
        fs.makedirs(fs._parent(path), exist_ok=True)
        fs.pipe_file(path, data)


def fetch_file(uri: str, scratch_dir: str | Path) -> Path:
    """A local file with the content at `uri`: a local file as it is, anything else copied into scratch_dir."""
    local = local_path(uri)
    if local is not None:
        if local.is_dir():
            raise StorageError(f"{uri}: a folder; expected a file")
        if not local.is_file():
            raise StorageError(f"{uri}: no such file")
        return local
    fs, path = filesystem(uri)
    target = Path(scratch_dir) / (Path(path).name or "download")
    target.parent.mkdir(parents=True, exist_ok=True)
    with errors_named(uri, "downloading it"):
        fs.get_file(path, str(target))
    return target


def upload_folder(local_dir: str | Path, uri: str) -> None:
    """Copy the files of a local folder (not sub-folders) to the folder URI."""
    fs, path = filesystem(uri)
    with errors_named(uri, "uploading to it"):
        fs.makedirs(path, exist_ok=True)
        for file in sorted(Path(local_dir).iterdir()):
            if file.is_file():
                fs.put_file(str(file), f"{path.rstrip('/')}/{file.name}")


def download_folder(uri: str, local_dir: str | Path) -> Path:
    """Copy the files of a folder URI into a local folder."""
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    fs, path = filesystem(uri)
    with errors_named(uri, "downloading it"):
        for remote in fs.ls(path, detail=False):
            if fs.isfile(remote):
                fs.get_file(remote, str(local_dir / Path(remote).name))
    return local_dir


def remove(uri: str) -> None:
    """Remove a file or folder URI; a missing one is fine."""
    fs, path = filesystem(uri)
    with errors_named(uri, "removing it"):
        if fs.exists(path):
            fs.rm(path, recursive=True)

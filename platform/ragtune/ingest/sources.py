"""Expand ingest sources (files, directories, globs, s3:// prefixes) into file entries."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path


class SourceError(ValueError):
    """A source names nothing that can be read."""


@dataclass(frozen=True)
class FileEntry:
    """``uri`` is what to read; ``rel`` is the stable name the document ids derive from."""

    uri: str
    rel: str
    size: int


def expand_sources(sources: list[str]) -> list[FileEntry]:
    """List every file under the given sources, sorted, hidden files and folders skipped.

    Raises:
        SourceError: a source does not exist or matches no file.
    """
    if not sources:
        raise SourceError("no sources given: pass files, directories, globs or s3:// URIs to ingest")
    entries: dict[str, FileEntry] = {}
    for source in sources:
        found = _expand_s3(source) if source.startswith("s3://") else _expand_local(source)
        if not found:
            raise SourceError(f"source {source!r} matches no file")
        for entry in found:
            entries.setdefault(entry.uri, entry)
    return sorted(entries.values(), key=lambda e: e.rel)


def _visible(rel: str) -> bool:
    return not any(part.startswith(".") for part in Path(rel).parts)


def _expand_local(source: str) -> list[FileEntry]:
    path = Path(source).expanduser()
    if glob.has_magic(source):
        root = Path(source.split("*")[0].split("?")[0].split("[")[0]).expanduser()
        root = root if root.is_dir() else root.parent
        files = [Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True)]
    elif path.is_dir():
        root, files = path, [p for p in path.rglob("*")]
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        raise SourceError(f"source {source!r} does not exist")
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix() if f.is_relative_to(root) else f.name
        if f.is_file() and _visible(rel):
            out.append(FileEntry(str(f.resolve()), rel, f.stat().st_size))
    return out


def _expand_s3(source: str) -> list[FileEntry]:
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(source)
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.File:
        return [FileEntry(source, Path(path).name, info.size)]
    selector = fs.FileSelector(path, recursive=True, allow_not_found=False)
    out = []
    for item in filesystem.get_file_info(selector):
        rel = item.path[len(path):].lstrip("/")
        if item.type == fs.FileType.File and _visible(rel):
            out.append(FileEntry(f"s3://{item.path}", rel, item.size))
    return out


def read_bytes(entry: FileEntry, limit: int) -> bytes:
    """Read a file, but never more than ``limit + 1`` bytes (enough to tell it is too large)."""
    if entry.uri.startswith("s3://"):
        from pyarrow import fs

        filesystem, path = fs.FileSystem.from_uri(entry.uri)
        with filesystem.open_input_stream(path) as stream:
            return stream.read(limit + 1)
    with open(entry.uri, "rb") as fh:
        return fh.read(limit + 1)

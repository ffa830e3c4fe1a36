"""The adapter registry a server answers `<base>:<adapter>` from: a directory or an s3:// prefix
with one PEFT adapter per sub-directory — what `ragtune train` writes to $RAGTUNE_HOME/adapters."""

from __future__ import annotations

import re
from pathlib import Path

from ragtune.config import ServeConfig, ragtune_home
from ragtune.runtime import is_storage_uri

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class UnknownAdapter(LookupError):
    """No adapter of that name in the registry."""


class AdapterRegistry:
    def __init__(self, cfg: ServeConfig):
        self.root = cfg.adapters or str(ragtune_home() / "adapters")
        self.remote = is_storage_uri(self.root)

    def _fs(self):
        from pyarrow import fs

        return fs.FileSystem.from_uri(self.root)

    @staticmethod
    def _is_adapter(filesystem, directory: str) -> bool:
        from pyarrow import fs

        return filesystem.get_file_info(f"{directory}/adapter_config.json").type == fs.FileType.File

    def names(self) -> list[str]:
        """Adapters present now (a sub-directory with adapter_config.json)."""
        if not self.remote:
            root = Path(self.root).expanduser()
            return sorted(p.parent.name for p in root.glob("*/adapter_config.json")) if root.is_dir() else []
        from pyarrow import fs

        filesystem, base = self._fs()
        entries = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
        return sorted(Path(e.path).name for e in entries
                      if e.type == fs.FileType.Directory and self._is_adapter(filesystem, e.path))

    def local_path(self, name: str) -> Path:
        """A local directory holding adapter ``name``. From an s3:// registry it is copied into
        $RAGTUNE_HOME/adapter_cache on every load (``fetch_adapter``), so a retrained adapter of the same
        name is served.

        Raises:
            UnknownAdapter: the name is not well formed or the registry has no such adapter.
        """
        if _NAME.match(name):
            if not self.remote:
                path = Path(self.root).expanduser() / name
                if (path / "adapter_config.json").is_file():
                    return path
            else:
                from ragtune.generation import AdapterError, fetch_adapter

                try:
                    return fetch_adapter(f"{self.root.rstrip('/')}/{name}")
                except AdapterError:
                    pass
        raise UnknownAdapter(f"no adapter {name!r} in {self.root}; available: {', '.join(self.names()) or 'none'}")

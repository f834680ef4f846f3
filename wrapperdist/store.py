"""The content-addressed stage store: one folder per stage output, named by the hash of everything
that determines it (`pretrain-3f9a…`). A folder counts only once its DONE marker is written (last),
so an interrupted stage is simply redone. Lives under the sweep's storage path, through pyarrow's
filesystems: a local folder, an NFS mount or an object store URI (s3://, gs://) alike — the same
way Ray's `RunConfig(storage_path=…)` takes it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

DONE = "DONE"


class Store:
    def __init__(self, uri: str):
        if "://" not in uri:
            uri = str(Path(uri).resolve())
        self.fs, root = pafs.FileSystem.from_uri(uri)
        self.root = root.rstrip("/") + "/store"
        self.uri = uri
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, key: str, name: str = "") -> str:
        return f"{self.root}/{key}/{name}".rstrip("/")

    def done(self, key: str) -> bool:
        return self.fs.get_file_info(self._path(key, DONE)).type == pafs.FileType.File

    def put(self, key: str, local_dir: Path) -> None:
        """Upload a finished stage's folder, then mark it done."""
        target = self._path(key)
        self.fs.create_dir(target, recursive=True)
        pafs.copy_files(str(local_dir), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        with self.fs.open_output_stream(self._path(key, DONE)) as f:
            f.write(b"ok\n")

    def fetch(self, key: str, dest: Path) -> Path:
        """The stage folder on the local disk (a copy for remote stores; the folder itself if local)."""
        if not self.done(key):
            raise FileNotFoundError(f"stage {key} is not in the store at {self.uri}")
        if isinstance(self.fs, pafs.LocalFileSystem):
            return Path(self._path(key))
        dest.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self._path(key), str(dest), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        return dest

    def read_json(self, key: str, name: str) -> Any:
        with self.fs.open_input_stream(self._path(key, name)) as f:
            return json.loads(f.read().decode())

    def files(self, key: str) -> list[str]:
        selector = pafs.FileSelector(self._path(key), recursive=False)
        return sorted(info.base_name for info in self.fs.get_file_info(selector) if info.base_name != DONE)


def write_stage_outputs(out_dir: Path, metrics: dict[str, float], history: list[tuple[int, dict[str, float]]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, sort_keys=True))
    (out_dir / "history.json").write_text(json.dumps(history))


def scratch_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"wrapperdist-{prefix}-"))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""Object storage for the landing zone and the lake, over fsspec (local path or ``s3://``).

One code path for both: every read and write goes through an fsspec filesystem, so nothing
special-cases local files in a way S3 would not take.

Atomic datasets
---------------
A dataset (``<root>/<lot>/<name>/``) is written into a fresh version folder
``v-<utc>-<uuid>/`` and made visible only by replacing the small pointer object
``<root>/<lot>/<name>/_CURRENT`` (one PUT on S3, one rename locally). A crash while writing
leaves an unreferenced version folder that readers never see; the next successful write
removes such orphans. Readers resolve ``_CURRENT`` first, so they see the old dataset or the
new one, never half of one.

Retries
-------
Transient storage errors (connection drops, throttling, 5xx) are retried with exponential
backoff (:func:`with_retries`); when the attempts are spent, :class:`StorageError` names the
object and the last error. Credentials are never part of a message.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from peelscan.ids import validate_id

log = logging.getLogger(__name__)
T = TypeVar("T")

POINTER = "_CURRENT"


class StorageError(RuntimeError):
    """A storage operation failed for good (after retries). The message names the object."""


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    name = type(exc).__name__
    text = str(exc)
    transient_words = ("Throttl", "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                       "Connection", "EndpointConnectionError", "ReadTimeout", "500", "502", "503", "504")
    return any(w in name or w in text for w in transient_words)


def with_retries(fn: Callable[[], T], what: str, attempts: int = 5, base_delay_s: float = 0.1) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors with exponential backoff.

    ``what`` names the object for the final error (a URI, never credentials). Non-transient
    errors (missing object, permission) are raised at once as they are.
    """
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _is_transient(exc):
                raise
            last = exc
            delay = base_delay_s * (2**attempt)
            log.warning("storage error on %s (attempt %d/%d): %s; retrying in %.2fs",
                        what, attempt + 1, attempts, type(exc).__name__, delay)
            time.sleep(delay)
    raise StorageError(f"storage operation on {what} failed after {attempts} attempts: "
                       f"{type(last).__name__}: {last}") from last


def url_to_fs(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and root path for a local path or ``s3://bucket/prefix`` URI.

    For S3, the endpoint and credentials come from the standard AWS environment variables
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), read by botocore.
    """
    opts = dict(storage_options or {})
    if uri.startswith("s3://"):
        # one retry layer that we control (with_retries); botocore and s3fs try little themselves
        opts.setdefault("config_kwargs", {"retries": {"max_attempts": 2, "mode": "standard"}})
        # a fresh instance: s3fs caches listings otherwise, and new landing files must be seen
        opts.setdefault("skip_instance_cache", True)
        opts.setdefault("use_listings_cache", False)
    fs, root = fsspec.core.url_to_fs(uri, **opts)
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's own loop (5 by default) would multiply with ours
    return fs, root.rstrip("/")


@dataclass
class Store:
    """A folder tree on a local disk or S3: the landing zone, or the lake.

    ``uri`` is what the user configured; ``fs`` and ``root`` are derived. All ``key``
    arguments are ``/``-joined relative paths whose parts were validated by the caller.
    """

    uri: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fs, self.root = url_to_fs(self.uri, self.storage_options)
        self.is_local = self.fs.protocol in ("file", "local") or "file" in tuple(self.fs.protocol)

    # -- paths ---------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def display(self, *parts: str) -> str:
        """A URI a person can read (``s3://bucket/...`` or a local path), for messages and tables."""
        p = self.path(*parts)
        return f"s3://{p}" if self.uri.startswith("s3://") else p

    # -- plain objects -------------------------------------------------------------------
    def list_dirs(self, *parts: str) -> list[str]:
        """Names of the sub-folders of ``parts`` (not recursive); [] if it does not exist."""
        base = self.path(*parts)
        def _ls() -> list[dict[str, Any]]:
            try:
                self.fs.invalidate_cache(base)
            except Exception:  # noqa: BLE001
                pass
            if not self.fs.exists(base):
                return []
            return self.fs.ls(base, detail=True)
        entries = with_retries(_ls, self.display(*parts))
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def list_files(self, *parts: str) -> list[dict[str, Any]]:
        """Files directly under ``parts``: dicts with ``name`` (base name), ``path``, ``size``,
        and ``version`` (mtime or ETag: changes when the content changes)."""
        base = self.path(*parts)
        def _ls() -> list[dict[str, Any]]:
            try:
                self.fs.invalidate_cache(base)
            except Exception:  # noqa: BLE001
                pass
            if not self.fs.exists(base):
                return []
            return self.fs.ls(base, detail=True)
        out = []
        for e in with_retries(_ls, self.display(*parts)):
            if e.get("type") != "file":
                continue
            name = e["name"].rsplit("/", 1)[-1]
            version = e.get("ETag") or e.get("etag") or e.get("mtime") or e.get("LastModified") or ""
            out.append({"name": name, "path": e["name"], "size": int(e.get("size") or 0),
                        "version": str(version)})
        return sorted(out, key=lambda d: d["name"])

    def read_bytes(self, *parts: str) -> bytes:
        p = self.path(*parts)
        return with_retries(lambda: self.fs.cat_file(p), self.display(*parts))

    def exists(self, *parts: str) -> bool:
        p = self.path(*parts)
        return with_retries(lambda: self.fs.exists(p), self.display(*parts))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write an object so that readers see the old content or the new, never a part."""
        final = self.path(*parts)
        parent = final.rsplit("/", 1)[0]
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}"
        def _put() -> None:
            self.fs.makedirs(parent, exist_ok=True)
            if self.is_local:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, final)  # os.rename: atomic on one filesystem
            else:
                self.fs.pipe_file(final, data)  # one PUT is atomic on S3
        with_retries(_put, self.display(*parts))

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), *parts)

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts))

    def rm(self, *parts: str, recursive: bool = True) -> None:
        p = self.path(*parts)
        def _rm() -> None:
            if self.fs.exists(p):
                self.fs.rm(p, recursive=recursive)
        with_retries(_rm, self.display(*parts))

    def content_version(self, *parts: str) -> str:
        """A short hash of everything under ``parts`` (names, sizes, mtimes/ETags), recursive.

        It changes when a file is added, removed or rewritten; the landing sensor and the
        nightly schedule compare it with the version a lot was last ingested or trained on."""
        import hashlib

        base = self.path(*parts)
        def _find() -> dict[str, Any]:
            try:
                self.fs.invalidate_cache(base)
            except Exception:  # noqa: BLE001
                pass
            if not self.fs.exists(base):
                return {}
            return self.fs.find(base, detail=True)
        found = with_retries(_find, self.display(*parts))
        h = hashlib.sha256()
        for path in sorted(found):
            e = found[path]
            rel = path[len(base):]
            version = e.get("ETag") or e.get("etag") or e.get("mtime") or e.get("LastModified") or ""
            h.update(f"{rel}\0{e.get('size')}\0{version}\n".encode())
        return h.hexdigest()[:16]

    # -- atomic Parquet datasets -----------------------------------------------------------
    def dataset_dir(self, lot_id: str, name: str) -> tuple[str, str]:
        return validate_id(lot_id, "lot id"), validate_id(name, "dataset name")

    def current_version(self, lot_id: str, name: str) -> str | None:
        """The visible version folder of dataset ``name`` of ``lot_id``, or None."""
        lot, nm = self.dataset_dir(lot_id, name)
        if not self.exists(lot, nm, POINTER):
            return None
        return self.read_json(lot, nm, POINTER)["version"]

    def dataset_files(self, lot_id: str, name: str) -> list[str]:
        """Filesystem paths of the Parquet parts of the visible version, in order.

        Raises FileNotFoundError naming the dataset when it has never been written."""
        lot, nm = self.dataset_dir(lot_id, name)
        version = self.current_version(lot, nm)
        if version is None:
            raise FileNotFoundError(f"dataset {self.display(lot, nm)} has not been written yet")
        manifest = self.read_json(lot, nm, version, "_MANIFEST.json")
        return [self.path(lot, nm, version, f) for f in manifest["files"]]

    def dataset_manifest(self, lot_id: str, name: str) -> dict[str, Any]:
        lot, nm = self.dataset_dir(lot_id, name)
        version = self.current_version(lot, nm)
        if version is None:
            raise FileNotFoundError(f"dataset {self.display(lot, nm)} has not been written yet")
        return self.read_json(lot, nm, version, "_MANIFEST.json")

    def write_dataset(
        self,
        lot_id: str,
        name: str,
        tables: Iterable[pa.Table] | pa.Table,
        row_group_size: int = 1024,
        metadata: dict[str, Any] | None = None,
        schema: pa.Schema | None = None,
    ) -> str:
        """Write ``tables`` (one table, or an iterable of tables with one schema, each written
        as its own part file) as a new version of ``<lot>/<name>`` and make it visible.

        Returns the version folder name. ``metadata`` (JSON-able: provenance, config, counts)
        is stored in the manifest. An empty iterable writes an empty dataset with ``schema``.
        """
        lot, nm = self.dataset_dir(lot_id, name)
        version = "v-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:8]
        if isinstance(tables, pa.Table):
            tables = [tables]
        files: list[str] = []
        n_rows = 0
        for i, table in enumerate(tables):
            if schema is None:
                schema = table.schema
            fname = f"part-{i:05d}.parquet"
            buf = io.BytesIO()
            pq.write_table(table, buf, row_group_size=row_group_size, compression="zstd")
            data = buf.getvalue()
            p = self.path(lot, nm, version, fname)
            def _put(p: str = p, data: bytes = data) -> None:
                self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
                self.fs.pipe_file(p, data)
            with_retries(_put, self.display(lot, nm, version, fname))
            files.append(fname)
            n_rows += table.num_rows
        if not files:
            if schema is None:
                raise ValueError(f"empty dataset {self.display(lot, nm)} needs a schema")
            buf = io.BytesIO()
            pq.write_table(schema.empty_table(), buf)
            p = self.path(lot, nm, version, "part-00000.parquet")
            data = buf.getvalue()
            def _put_empty() -> None:
                self.fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
                self.fs.pipe_file(p, data)
            with_retries(_put_empty, self.display(lot, nm, version))
            files.append("part-00000.parquet")
        manifest = {"version": version, "files": files, "rows": n_rows,
                    "written_at": datetime.now(timezone.utc).isoformat(), "metadata": metadata or {}}
        self.write_json(manifest, lot, nm, version, "_MANIFEST.json")
        self.write_json({"version": version}, lot, nm, POINTER)  # the commit point
        self._remove_other_versions(lot, nm, keep=version)
        return version

    def _remove_other_versions(self, lot: str, nm: str, keep: str) -> None:
        for d in self.list_dirs(lot, nm):
            if d.startswith("v-") and d != keep:
                try:
                    self.rm(lot, nm, d)
                except Exception as exc:  # noqa: BLE001 - garbage collection is best effort
                    log.warning("could not remove old version %s: %s", self.display(lot, nm, d), exc)

    def read_dataset(self, lot_id: str, name: str, columns: list[str] | None = None) -> pa.Table:
        """The whole visible version of ``<lot>/<name>`` as one table."""
        tables = [self.read_part(p, columns=columns) for p in self.dataset_files(lot_id, name)]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]

    def read_part(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet part file by its filesystem path."""
        data = with_retries(lambda: self.fs.cat_file(path), path)
        return pq.read_table(io.BytesIO(data), columns=columns)

    def iter_row_groups(self, lot_id: str, name: str, columns: list[str] | None = None) -> Iterator[tuple[str, int]]:
        """(part path, row group index) for every row group of the visible version: the unit
        a Dask task streams."""
        for p in self.dataset_files(lot_id, name):
            data = with_retries(lambda p=p: self.fs.cat_file(p), p)
            n = pq.ParquetFile(io.BytesIO(data)).num_row_groups
            for g in range(n):
                yield p, g

    def read_row_group(self, path: str, index: int, columns: list[str] | None = None) -> pa.Table:
        def _read() -> pa.Table:
            with self.fs.open(path, "rb") as f:
                return pq.ParquetFile(f).read_row_group(index, columns=columns)
        return with_retries(_read, f"{path}#rowgroup{index}")

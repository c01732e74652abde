"""Where shards live: a local folder or an fsspec URL, behind one small interface (docs/shards.md, Storage).

Every place gpf reads or writes a location takes a :class:`Location`: a local
path (or ``file://`` URL) keeps today's guarantees (temp file, fsync, rename:
:mod:`gpf.fsutil`); any other URL (``s3://``, ``gs://``, ``az://``, ``hf://``,
``http(s)://`` ...) goes through fsspec, so protocol specifics live here and
nowhere else.

* Credentials and endpoints come the way fsspec users expect (environment,
  the provider's config files, ``FSSPEC_S3_*`` variables) plus storage
  options: ``Location(url, {"endpoint_url": ...})``, or for every location of a
  process :func:`using_options` (what ``--storage-options JSON`` sets).
* Storage options live in memory only: a location prints, pickles into a
  record and appears in messages as :func:`public_url` (no user:password, no
  query string, so no signed-URL signature), and options are never written.
* Errors name the URL: a refused key or a missing object is one line
  (:class:`StorageError`); transient failures are retried with backoff
  (:func:`retrying`) and then reported as one line.
* Each process opens its own filesystem instance (s3fs is not fork-safe):
  loader workers never share a connection pool with their parent.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import GPFError, OptionError
from ..fsutil import atomic_write_bytes, fsync_dir, temp_path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: The pip extra of gpf that installs each protocol's filesystem package.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure",
          "abfss": "azure", "adl": "azure", "hf": "hf", "http": "http", "https": "http"}
#: Read block of a streamed object and how many blocks are fetched ahead of the reader.
STREAM_CHUNK = 4 << 20
STREAM_READAHEAD = 2
#: Attempts of one storage call before a transient failure is reported, and the first pause.
RETRIES = 4
BACKOFF_S = 0.5
#: s3 defaults gpf sets unless the storage options set them: bounded waits on a dead endpoint.
S3_CONFIG_DEFAULTS = {"connect_timeout": 10, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}


class StorageError(GPFError, OSError):
    """A location cannot be read or written; the message names the URL and what to do."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object or prefix does not exist."""


class StoragePermissionError(StorageError, PermissionError):
    """The store refused the credentials (wrong key, no access to the bucket)."""


class MissingFilesystemError(StorageError):
    """The fsspec filesystem package of a URL's protocol is not installed."""


# ----------------------------------------------------------------------------- URLs

def is_url(location: Any) -> bool:
    """True for a URL that fsspec opens (``s3://``, ``gs://`` ...); False for local paths and ``file://``."""
    if isinstance(location, Location):
        return location.remote
    if not isinstance(location, str):
        return False
    match = _SCHEME.match(location)
    return match is not None and match.group(1).lower() != "file"


def _local_text(text: str) -> str:
    """A local path from a path or a ``file://`` URL."""
    if text.lower().startswith("file://"):
        from urllib.request import url2pathname

        return url2pathname(urlsplit(text).path)
    return text


def public_url(location: Any) -> str:
    """``location`` as it may be written to disk or logs: no ``user:password@``, no query string or fragment
    (a signed URL's signature), local paths unchanged."""
    if isinstance(location, Location):
        location = location.url
    text = os.fspath(location) if isinstance(location, os.PathLike) else str(location)
    if not is_url(text):
        return text
    parts = urlsplit(text)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def public_location_text(value: Any) -> Any:
    """:func:`public_url` of a string that is a URL; any other value unchanged (for configs written to disk)."""
    return public_url(value) if is_url(value) else value


# ----------------------------------------------------------------------------- options

_default_options: dict = {}


def default_options() -> dict:
    """The storage options a location gets when none are given (:func:`using_options`)."""
    return dict(_default_options)


@contextlib.contextmanager
def using_options(options: Mapping | None) -> Iterator[None]:
    """Storage options for every :class:`Location` made without its own, inside the block (the CLI's
    ``--storage-options``); loader workers inherit them through the locations they are given."""
    global _default_options
    previous = _default_options
    _default_options = dict(options or {})
    try:
        yield
    finally:
        _default_options = previous


def parse_options(text: str | None) -> dict:
    """``--storage-options JSON`` as a dict; :class:`OptionError` for anything but a JSON object."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OptionError(f"storage options must be a JSON object, e.g. '{{\"endpoint_url\": "
                          f"\"http://minio:9000\"}}': {exc.msg} at character {exc.pos}",
                          param="storage_options") from None
    if not isinstance(value, dict):
        raise OptionError(f"storage options must be a JSON object (keys and values), got {type(value).__name__}",
                          param="storage_options")
    return value


# ----------------------------------------------------------------------------- filesystems

_filesystems: dict[tuple, Any] = {}
_filesystems_lock = threading.Lock()


def _with_defaults(protocol: str, options: Mapping) -> dict:
    options = dict(options)
    if protocol in ("s3", "s3a"):
        config = dict(options.get("config_kwargs") or {})
        for key, value in S3_CONFIG_DEFAULTS.items():
            config.setdefault(key, value)
        options["config_kwargs"] = config
    return options


def _filesystem(url: str, options: Mapping):
    """``(fs, path)`` of a URL: one instance per process, protocol and options (never shared across fork)."""
    import fsspec.core

    protocol = _SCHEME.match(url).group(1).lower()
    key = (os.getpid(), protocol, json.dumps(options, sort_keys=True, default=str))
    with _filesystems_lock:
        fs = _filesystems.get(key)
        if fs is None:
            try:
                fs, _ = fsspec.core.url_to_fs(url, skip_instance_cache=True, **_with_defaults(protocol, options))
            except ImportError as exc:
                extra = EXTRAS.get(protocol)
                fix = f"pip install 'gpf[{extra}]'" if extra else "install the fsspec filesystem package for it"
                raise MissingFilesystemError(f"{public_url(url)}: the filesystem package for {protocol}:// is not "
                                             f"installed ({exc}); {fix}") from None
            except ValueError as exc:
                raise StorageError(f"{public_url(url)}: {exc}; gpf reads and writes local paths and the "
                                   "URLs fsspec knows (s3://, gs://, az://, hf://, http(s)://)") from None
            _filesystems[key] = fs
    return fs, fs._strip_protocol(url)


# ----------------------------------------------------------------------------- errors and retries

def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (StorageError, PermissionError, FileNotFoundError, IsADirectoryError,
                        NotADirectoryError, ValueError, TypeError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError)) or \
        type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests")


def named_error(where: str, exc: BaseException, doing: str) -> StorageError:
    """One line naming ``where`` for a store's error that does not name it (s3fs says "Forbidden")."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, PermissionError):
        return StoragePermissionError(f"{where}: access denied while {doing} ({exc}); check the credentials "
                                      "(environment, the provider's config files or --storage-options) and "
                                      "the bucket's permissions")
    if isinstance(exc, FileNotFoundError):
        return StorageNotFoundError(f"{where}: no such object or prefix (while {doing}); check the URL")
    return StorageError(f"{where}: {doing} failed ({type(exc).__name__}: {exc})")


def retrying(call: Callable[[], Any], where: str, doing: str, attempts: int = RETRIES,
             backoff_s: float = BACKOFF_S) -> Any:
    """``call()``, again after a pause (doubling from ``backoff_s``) while it fails transiently; then one
    :class:`StorageError` naming ``where``. Permission and missing-object errors are not retried."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - classified below
            if not _transient(exc):
                raise named_error(where, exc, doing) from None
            if attempt + 1 == attempts:
                raise StorageError(f"{where}: {doing} failed {attempts} times, the last with "
                                   f"{type(exc).__name__}: {str(exc)[:200]}; the store is unreachable or "
                                   "failing: check the endpoint and the network, then rerun") from None
            time.sleep(backoff_s * 2 ** attempt)


# ----------------------------------------------------------------------------- the location

@dataclass(frozen=True)
class ObjectInfo:
    """Size and the store's content tag of one object (S3 ETag, GCS md5/etag; local: size and mtime)."""
    size: int
    etag: str | None = None


class Location:
    """A local path or an fsspec URL, with the storage options to open it (kept in memory only).

    ``str(location)`` is :func:`public_url`; ``location.local`` is the :class:`~pathlib.Path`
    of a local location (None for a URL).
    """

    def __init__(self, where: str | os.PathLike | "Location", options: Mapping | None = None):
        if isinstance(where, Location):
            self.url, self.remote, self.local = where.url, where.remote, where.local
            self.options = dict(options) if options is not None else dict(where.options)
            return
        text = os.fspath(where)
        if not isinstance(text, str) or not text:
            raise OptionError(f"a location must be a non-empty path or URL, got {where!r}", param="location")
        self.remote = is_url(text)
        if self.remote:
            self.url, self.local = text, None
            self.options = dict(options) if options is not None else default_options()
        else:
            self.local = Path(_local_text(text))
            self.url, self.options = str(self.local), {}

    # -- naming
    def __str__(self) -> str:
        return public_url(self.url)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        if self.local is None:
            raise TypeError(f"{self} is a URL, not a local path")
        return str(self.local)

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def name(self) -> str:
        return self.local.name if self.local is not None else self.url.rstrip("/").rpartition("/")[2]

    @property
    def protocol(self) -> str:
        return _SCHEME.match(self.url).group(1).lower() if self.remote else "file"

    def __truediv__(self, part: str) -> "Location":
        return self.join(part)

    def join(self, *parts: str) -> "Location":
        """The location ``parts`` below this one (``/``-separated names)."""
        if self.local is not None:
            return Location(self.local.joinpath(*parts))
        head, sep, query = self.url.partition("?")
        joined = "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(joined + sep + query, self.options)

    # -- the filesystem
    def _fs(self):
        return _filesystem(self.url, self.options)

    def _call(self, doing: str, fn: Callable[[Any, str], Any]) -> Any:
        def call():
            fs, path = self._fs()
            return fn(fs, path)
        return retrying(call, str(self), doing)

    # -- queries
    def exists(self) -> bool:
        if self.local is not None:
            return self.local.exists()
        return bool(self._call("checking it exists", lambda fs, p: fs.exists(p)))

    def is_dir(self) -> bool:
        """A local folder, or a URL prefix holding objects."""
        if self.local is not None:
            return self.local.is_dir()
        return bool(self._call("listing it", lambda fs, p: fs.isdir(p)))

    def info(self) -> ObjectInfo:
        """Size and content tag; :class:`StorageNotFoundError` when missing."""
        if self.local is not None:
            try:
                st = self.local.stat()
            except FileNotFoundError:
                raise StorageNotFoundError(f"{self}: no such file") from None
            return ObjectInfo(st.st_size, f"{st.st_size}-{st.st_mtime_ns}")

        def info(fs, path):
            fs.invalidate_cache(path)
            return fs.info(path)
        return _object_info(self._call("reading its size", info))

    def list(self) -> dict[str, ObjectInfo]:
        """The files directly below this folder or prefix, by name (empty when it does not exist)."""
        if self.local is not None:
            if not self.local.is_dir():
                return {}
            out = {}
            for path in self.local.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.is_file():
                        st = path.stat()
                        out[path.name] = ObjectInfo(st.st_size, f"{st.st_size}-{st.st_mtime_ns}")
            return out

        def listing(fs, path):
            fs.invalidate_cache(path)
            try:
                return fs.ls(path, detail=True)
            except FileNotFoundError:
                return []
        return {entry["name"].rstrip("/").rpartition("/")[2]: _object_info(entry)
                for entry in self._call("listing it", listing) if entry.get("type") != "directory"}

    def find(self, recursive: bool = True) -> list[str]:
        """Keys of the objects below this prefix relative to it, sorted (``/``-separated); empty for an object
        or nothing. Remote locations only (local folders are walked with ``os.walk``)."""
        if self.local is not None:
            raise TypeError(f"{self} is a local path; walk it with os.walk")

        def find(fs, path):
            fs.invalidate_cache(path)
            if not fs.isdir(path):
                return []
            found = fs.find(path, maxdepth=None if recursive else 1)
            return sorted(name[len(path.rstrip("/")) + 1:] for name in found)
        return self._call("listing it", find)

    # -- reading
    def open_read(self, block_size: int = STREAM_CHUNK):
        """A binary file object for reading (remote: buffered ranged reads)."""
        if self.local is not None:
            try:
                return open(self.local, "rb")
            except FileNotFoundError:
                raise StorageNotFoundError(f"{self}: no such file") from None
        return self._call("opening it", lambda fs, p: fs.open(p, "rb", block_size=block_size,
                                                               cache_type="readahead"))

    def read_bytes(self) -> bytes:
        if self.local is not None:
            try:
                return self.local.read_bytes()
            except FileNotFoundError:
                raise StorageNotFoundError(f"{self}: no such file") from None
        return self._call("reading it", lambda fs, p: fs.cat_file(p))

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (remote reads are idempotent, so they are retried)."""
        if self.local is not None:
            with open(self.local, "rb") as f:
                f.seek(start)
                return f.read(end - start)
        return self._call(f"reading bytes {start}-{end}", lambda fs, p: fs.cat_file(p, start=start, end=end))

    def sha256(self) -> str:
        """sha256 of the whole object, streamed."""
        digest = hashlib.sha256()
        with self.stream() as stream:
            while chunk := stream.read(STREAM_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def stream(self, size: int | None = None, **kw) -> "ObjectStream":
        """The object read front to back with read-ahead and retries (:class:`ObjectStream`)."""
        return ObjectStream(self, size, **kw)

    # -- writing
    def makedirs(self) -> None:
        """Create a local folder and its parents (a URL prefix needs none)."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)

    def write_bytes(self, data: bytes, temp_name: str | None = None) -> None:
        """The whole object at once: locally a temp file renamed over it, remotely one PUT (atomic on S3)."""
        if self.local is not None:
            self.local.parent.mkdir(parents=True, exist_ok=True)   # a store has no folders to make first
            atomic_write_bytes(self.local, data, temp_name)
            return
        self._call("writing it", lambda fs, p: fs.pipe_file(p, data))

    def upload(self, temp_name: str | None = None) -> "Upload":
        """A streamed write that appears under this name only on :meth:`Upload.commit` (see :class:`Upload`)."""
        return Upload(self, temp_name)

    def put_file(self, local: str | os.PathLike) -> None:
        """Copy a local file here (a temp-file rename locally, an upload remotely)."""
        if self.local is not None:
            tmp = temp_path(self.local)
            try:
                shutil.copyfile(local, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            from ..fsutil import commit

            commit(tmp, self.local)
            return
        self._call("uploading it", lambda fs, p: fs.put_file(os.fspath(local), p))

    def delete(self) -> None:
        """Remove the file or object; nothing when it is not there."""
        if self.local is not None:
            self.local.unlink(missing_ok=True)
            return

        def remove(fs, path):
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass
        self._call("deleting it", remove)

    def abort_unfinished_uploads(self, which: Callable[[str], bool] | None = None) -> int:
        """Abort the multipart uploads a killed writer left at this key or below this prefix (S3; other stores
        have none: 0). ``which(relative_key)`` limits them (e.g. to the names gpf writes)."""
        if self.local is not None:
            return 0
        fs, path = self._fs()
        if not hasattr(fs, "list_multipart_uploads"):
            return 0
        bucket, _, key = path.partition("/")
        prefix = key.rstrip("/")

        def listing(f, p):
            out = f.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
            return out.get("Uploads", []) or []
        aborted = 0
        for upload in self._call("listing unfinished uploads", listing):
            name = upload.get("Key", "")
            relative = name[len(prefix):].lstrip("/")
            if prefix and name != prefix and not name.startswith(prefix + "/"):
                continue
            if which is not None and not which(relative):
                continue
            self._call("aborting an unfinished upload", lambda f, p: f.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=name, UploadId=upload["UploadId"]))
            aborted += 1
        return aborted


def as_location(where: str | os.PathLike | Location) -> Location:
    """``where`` as a :class:`Location` (a Location is returned as it is)."""
    return where if isinstance(where, Location) else Location(where)


def _object_info(entry: Mapping) -> ObjectInfo:
    tag = entry.get("ETag") or entry.get("etag") or entry.get("md5Hash") or entry.get("content_md5") \
        or entry.get("checksum")
    return ObjectInfo(int(entry.get("size") or 0), str(tag).strip('"') if tag is not None else None)


# ----------------------------------------------------------------------------- streamed writes

class Upload:
    """A file being written under a location's name, visible only once committed.

    Local: a temp file in the same folder (``temp_name``, or a unique hidden name), fsynced and renamed
    over the target on :meth:`commit` (and the folder fsynced). Remote: written to the final key
    through the store's buffered writer (multipart on S3), which makes the object exist only when
    :meth:`commit` completes it; :meth:`abort` discards it (aborting the multipart upload).
    """

    def __init__(self, location: Location, temp_name: str | None = None):
        self.location = location
        if location.local is not None:
            location.local.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = location.local.with_name(temp_name) if temp_name else temp_path(location.local)
            self._file = open(self._tmp, "wb")
        else:
            self._tmp = None
            location.abort_unfinished_uploads()   # one writer per key: what a killed writer left is garbage
            self._file = location._call("starting the upload",
                                        lambda fs, p: fs.open(p, "wb", block_size=max(STREAM_CHUNK, 5 << 20)))
        self._done = False

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except Exception as exc:  # noqa: BLE001 - named once
            raise named_error(str(self.location), exc, "uploading it") from None

    def flush(self) -> None:
        self._file.flush()

    def commit(self) -> None:
        """Finish: rename into place (local) or complete the upload (remote)."""
        if self._tmp is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.location.local)
            fsync_dir(self.location.local.parent)
        else:
            try:
                self._file.close()
            except Exception as exc:  # noqa: BLE001
                raise named_error(str(self.location), exc, "finishing the upload") from None
        self._done = True

    def abort(self) -> None:
        """Drop what was written; the target is left as it was."""
        if self._done:
            return
        self._done = True
        if self._tmp is not None:
            try:
                self._file.close()
            finally:
                self._tmp.unlink(missing_ok=True)
            return
        with contextlib.suppress(Exception):
            self._file.discard() if hasattr(self._file, "discard") else None
        with contextlib.suppress(Exception):
            self._file.closed = True


# ----------------------------------------------------------------------------- streamed reads

class ObjectStream:
    """An object read front to back: ranged reads of ``chunk`` bytes, ``readahead`` of them fetched ahead
    by a background thread, each retried on transient errors; the sha256 of everything read is kept.

    ``seek(n, 1)`` skips forward by reading (so the digest covers every byte). Local files are read
    the same way, so a cache file and an object behave alike.
    """

    def __init__(self, location: Location, size: int | None = None, *, chunk: int = STREAM_CHUNK,
                 readahead: int = STREAM_READAHEAD, sink: Callable[[bytes], Any] | None = None):
        self.location = location
        self.size = location.info().size if size is None else int(size)
        self.chunk, self.readahead = max(1, int(chunk)), max(0, int(readahead))
        self.sha256 = hashlib.sha256()
        self.position = 0                     # bytes handed to the reader
        self._sink = sink
        self._next = 0                        # next offset to request
        self._buffer = memoryview(b"")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpf-read") if self.readahead else None
        self._pending: deque = deque()

    def __enter__(self) -> "ObjectStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def _fetch(self, start: int) -> bytes:
        end = min(start + self.chunk, self.size)
        data = self.location.read_range(start, end)
        if len(data) != end - start:
            raise StorageError(f"{self.location}: got {len(data)} bytes at offset {start}, expected "
                               f"{end - start} (the object changed or was truncated while being read)")
        return data

    def _refill(self) -> bool:
        if self._pool is None:
            if self._next >= self.size:
                return False
            data = self._fetch(self._next)
            self._next += len(data)
        else:
            while len(self._pending) < self.readahead + 1 and self._next < self.size:
                self._pending.append(self._pool.submit(self._fetch, self._next))
                self._next = min(self._next + self.chunk, self.size)
            if not self._pending:
                return False
            data = self._pending.popleft().result()
        self.sha256.update(data)
        if self._sink is not None:
            self._sink(data)
        self._buffer = memoryview(data)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.position
        if 0 < n <= len(self._buffer):            # the common case: a tar header or a member inside one chunk
            take, self._buffer = self._buffer[:n], self._buffer[n:]
            self.position += n
            return take.tobytes()
        parts = []
        while n > 0:
            if not len(self._buffer) and not self._refill():
                break
            take = self._buffer[:n]
            self._buffer = self._buffer[len(take):]
            parts.append(bytes(take))
            n -= len(take)
            self.position += len(take)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.position + offset if whence == io.SEEK_CUR else None
        if target is None or target < self.position:
            raise io.UnsupportedOperation("an ObjectStream only skips forward")
        while self.position < target:
            if not self.read(min(target - self.position, self.chunk)):
                break
        return self.position

    def tell(self) -> int:
        return self.position

    def drain(self) -> None:
        """Read to the end (so :attr:`sha256` covers the whole object)."""
        while self.read(self.chunk):
            pass

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()


# ----------------------------------------------------------------------------- whole-file reads

_fetched_dir: tempfile.TemporaryDirectory | None = None


def local_file(where: str | os.PathLike | Location, within: tuple[str, ...] = ()) -> Path:
    """A local path for a file at ``where``: a local path as it is; a URL downloaded once per process into a
    temporary folder removed at exit. A URL prefix holding none of the object but one of ``within``
    (e.g. a run folder's ``best.pt``, ``last.pt``) gives the first of those that exists."""
    global _fetched_dir
    loc = as_location(where)
    if loc.local is not None:
        return loc.local
    source = loc
    if within and loc.is_dir():
        found = [loc.join(name) for name in within if loc.join(name).exists()]
        if not found:
            raise StorageNotFoundError(f"{loc} holds no {' or '.join(within)}; pass a checkpoint file or a "
                                       "run folder made by `gpf train`")
        source = found[0]
    if _fetched_dir is None:
        _fetched_dir = tempfile.TemporaryDirectory(prefix="gpf-fetched-")
    target = Path(_fetched_dir.name) / hashlib.sha256(source.url.encode()).hexdigest()[:16] / source.name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        data = source.read_bytes()
        atomic_write_bytes(target, data)
    return target


def read_parquet(where: str | os.PathLike | Location, columns: list[str] | None = None):
    """A Parquet file or object as a ``pyarrow.Table`` (an object is fetched whole: shard Parquets are small)."""
    import pyarrow.parquet as pq

    loc = as_location(where)
    if loc.local is not None:
        return pq.read_table(loc.local, columns=columns)
    return pq.read_table(io.BytesIO(loc.read_bytes()), columns=columns)


def localize(value: Any) -> Any:
    """A URL's local copy (:func:`local_file`) as a path string; any other value (a path, ``imagenet``,
    ``none``, None) unchanged: for options that take a file or a keyword, like ``--weights``."""
    return str(local_file(value)) if is_url(value) else value

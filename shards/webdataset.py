"""Read gpf shards with your own loop: a ``webdataset.WebDataset`` pipeline over any location (docs/shards.md).

:func:`webdataset_pipeline` lists the tars of one split from the manifest and gives
webdataset an fsspec-backed opener for their URLs (webdataset 1.0 opens ``s3://``
nowhere and ``gs://`` through a ``gsutil`` pipe; this opener runs no shell and
streams with the retries and read-ahead of :mod:`gpf.shards.storage`). Samples are
decoded here, never unpickled: ``json`` to a dict, JPEG members to ``uint8``
tensors ``[3, H, W]``, ``.npy`` members with ``allow_pickle=False``; members
outside the contract are dropped.
"""
from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import numpy as np

from .layout import ATTN, FEATURES, JSON, is_contract_member
from .storage import Location, as_location


def open_url(url: str, mode: str = "rb", bufsize: int = 8192, *, options: dict | None = None, **_):
    """webdataset's ``gopen`` handler for fsspec URLs: a streamed read (:class:`~gpf.shards.storage.ObjectStream`)."""
    if mode != "rb":
        raise ValueError(f"{url}: gpf's webdataset opener reads only (mode 'rb'), got {mode!r}")
    return Location(url, options).stream()


def register_opener(protocols, options: dict | None = None) -> None:
    """Make webdataset open ``protocols`` (e.g. ``{"s3"}``) through fsspec with ``options``: entries in its
    ``gopen_schemes`` table (process-wide; the options of the latest call win for a protocol)."""
    import sys

    import webdataset.gopen  # noqa: F401 - the module, not the function the package re-exports

    schemes = sys.modules["webdataset.gopen"].gopen_schemes
    for protocol in protocols:
        schemes[protocol] = functools.partial(open_url, options=options)


def _with_opener(source: Iterator, protocols: tuple[str, ...], options: dict | None) -> Iterator:
    """Pipeline stage that registers the opener where the pipeline runs (a spawned loader worker too)."""
    register_opener(protocols, options)
    yield from source


def decode_sample(sample: dict) -> dict:
    """A raw webdataset sample of a gpf shard, decoded without unpickling (see the module doc)."""
    from .reader import decode_jpegs_uint8

    out = {k: v for k, v in sample.items() if k.startswith("__")}
    where = f"{sample.get('__url__', '?')}, key {sample.get('__key__')!r}"
    for member, data in sample.items():
        if member.startswith("__") or not is_contract_member(member):
            continue
        if member == JSON:
            out[member] = json.loads(data)
        elif member in (ATTN, FEATURES):
            out[member] = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            out[member] = decode_jpegs_uint8([data], [f"{where}, {member}"])[0]
    return out


def shard_urls(shard_dir: str | os.PathLike | Location, split: str) -> list[str]:
    """The tars of ``split`` as webdataset opens them: local paths or full URLs, in index order."""
    from .reader import list_shards

    return [str(spec.path) if not isinstance(spec.path, Location) else spec.path.url
            for spec in list_shards(shard_dir, split)]


def webdataset_pipeline(shard_dir: str | os.PathLike | Location, split: str, *,
                        storage_options: dict | None = None, decode: bool = True, **webdataset_args):
    """A ``webdataset.WebDataset`` over the ``split`` shards of ``shard_dir`` (a folder or any fsspec URL).

    >>> ds = webdataset_pipeline("s3://bucket/shards", "train", shardshuffle=100,  # doctest: +SKIP
    ...                          nodesplitter=wds.split_by_node).shuffle(1000)
    >>> for sample in ds: sample["json"]["votes"], sample["periph.jpg"], sample["fovea.jpg"]  # doctest: +SKIP

    ``storage_options`` default to the location's (or :func:`gpf.shards.storage.using_options`').
    ``webdataset_args`` go to ``WebDataset`` (``shardshuffle`` defaults to False: the manifest order;
    ``nodesplitter`` to webdataset's own, which refuses several ranks; see docs/shards.md for the DDP
    pitfalls). ``decode=False`` leaves the members as bytes.
    """
    import webdataset as wds

    location = as_location(shard_dir)
    options = dict(location.options if storage_options is None else storage_options)
    urls = shard_urls(Location(location, options) if location.remote else location, split)
    protocols = tuple(sorted({urlsplit(u).scheme for u in urls} - {""}))
    if protocols:
        register_opener(protocols, options)
    webdataset_args.setdefault("shardshuffle", False)
    dataset = wds.WebDataset(urls, **webdataset_args)
    if protocols:
        dataset.pipeline.insert(1, functools.partial(_with_opener, protocols=protocols, options=options))
    return dataset.map(decode_sample) if decode else dataset

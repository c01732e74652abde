"""Online scoring of raw photos: the whole GPF-CNN path on images that were never preprocessed.

Per photo (paper, section III and Fig. 2): upright RGB decode at full
resolution -> peripheral view (aspect kept, longest side = view size, short
side rounded as the shards it was trained on were made) -> Excitation Backprop
map of the *embedded* stage-1 model on that un-encoded view (Eq. 2-3) -> optimal
tau box (Eq. 4), mapped to original pixels -> foveal view (the box of the
original, zoomed to view size square) -> the JPEG round trip of both views (the
quality and chroma subsampling the shards stored them with) -> both subnets and
the fusion (:func:`gpf.pipeline.evaluation.predict_batch`, views fitted to the
networks as in training) -> softmax over the N score buckets. The box is
computed by :func:`gpf.pipeline.attend.attend_views` with the view geometry of
``gpf preprocess`` (:func:`gpf.pipeline.compat.shard_geometry`), so a photo of a
shard gets exactly the box stored in the shard's Parquet row, and the networks
read exactly the pixels ``gpf evaluate`` decodes from the shard: the two give
the same score to float precision.

Usage (README)::

    from .scoring import Scorer
    scorer = Scorer.from_checkpoint("runs/gpf-vgg16/best.pt")   # device='auto'
    result = scorer.score(Image.open("photo.jpg"))              # or a path
    print(result.mean, result.distribution, result.box)

Variants (Table I): ``gpf`` and ``pf`` use the attention crop; ``single`` uses
the peripheral view only (no box is computed); ``random`` averages the predicted
distributions over K seeded random view-size crops (see :class:`Scorer`).
"""
from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import GPFError
from ..fsutil import commit, temp_path
from ..vocabulary import JPEG_CHROMA_SUBSAMPLING, JPEG_QUALITY, TAU, VIEW_FIT, VIEW_ROUND
from ..model.checkpoint import Checkpoint
from ..model.geometry import ViewGeometry
from ..shards.storage import Location, as_location, is_url, public_url
from .attend import AttentionModel, Attended, NetworkLost, attend_views

DEFAULT_BATCH_SIZE = 32
#: Random crops averaged per photo by the ``random`` variant (see :class:`Scorer`).
DEFAULT_RANDOM_CROPS = 5
#: Status of a photo that decoded but whose batch failed in the network.
SCORE_ERROR = "score_error"
#: File name extensions that ``iter_image_files`` picks from folders.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp",
    ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".jpx", ".avif", ".mpo",
})


class ScoringError(GPFError):
    """A checkpoint or input that cannot be scored; the message says what to do."""


# ----------------------------------------------------------------------------- results

@dataclass(frozen=True)
class ScoreResult:
    """The score of one photo, or why it has none (``status`` != ``'ok'``).

    ``id`` is the id the photo was given (``gpf predict``: its path relative to
    the input, see :func:`named_image_files`), else :func:`image_id_of`.
    ``distribution`` is the predicted probability of each score bucket,
    ``mean``/``std`` its mean score and spread over the bucket scores, ``high``
    whether ``mean > threshold`` (paper, section IV-B), ``box`` the attended
    region ``(x0, y0, x1, y1)`` in pixels of the upright original (half-open;
    None for the ``single`` and ``random`` variants), ``size`` the upright
    original's ``(width, height)``.
    """

    id: str
    path: str | None
    status: str = "ok"
    error: str | None = None
    mean: float | None = None
    std: float | None = None
    distribution: tuple[float, ...] | None = None
    high: bool | None = None
    box: tuple[int, int, int, int] | None = None
    attn_fraction: float | None = None
    size: tuple[int, int] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict:
        """Plain JSON types; the box as ``x0 y0 x1 y1`` like the shards' Parquet rows."""
        box = self.box or (None, None, None, None)
        width, height = self.size or (None, None)
        return {"id": self.id, "path": self.path, "width": width, "height": height,
                "mean": self.mean, "std": self.std,
                "distribution": list(self.distribution) if self.distribution is not None else None,
                "high": self.high, "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                "attn_fraction": self.attn_fraction, "status": self.status, "error": self.error}


@dataclass
class AttentionView:
    """What the attention stage made of one photo (the panels of the paper's Fig. 4)."""

    image: Any                       # upright RGB original (PIL)
    periph: Any                      # peripheral view (PIL)
    attended: Attended               # EB map, box, share of attention inside
    fovea: Any                       # foveal view (PIL, view size square)


# ----------------------------------------------------------------------------- inputs

def image_id_of(source, index: int = 0) -> str:
    """The photo's dataset id: its file name without extension (AVA: the id); ``image{index}`` for an unnamed PIL image.

    It is the key that seeds the ``random`` variant's crop positions (as
    ``gpf preprocess`` seeds them with the dataset id), whatever id a result is
    reported under, and the id of a result when no other is given.
    """
    if isinstance(source, Location):
        return Path(source.name).stem
    if isinstance(source, (str, os.PathLike)):
        return Path(source).stem
    filename = getattr(source, "filename", None)
    return Path(filename).stem if filename else f"image{index}"


@dataclass(frozen=True)
class NamedImage:
    """A photo (path or PIL image) and the id its result is reported under (see :func:`named_image_files`)."""

    id: str
    source: Any


def load_source(source, max_pixels: int | None):
    """``(upright RGB image, path or None)`` of a path, a URL (read with this process's storage options,
    :func:`gpf.shards.storage.using_options`) or a PIL image; raises ImageError."""
    from .images import load_image, upright_rgb

    if isinstance(source, str) and is_url(source):
        source = Location(source)
    if isinstance(source, Location) and source.remote:
        return _load_remote(source, max_pixels), str(source)
    if isinstance(source, (str, os.PathLike)):
        return load_image(source, max_pixels=max_pixels), str(source)
    if hasattr(source, "size") and hasattr(source, "mode"):
        filename = getattr(source, "filename", None) or None
        return upright_rgb(source, filename or "<PIL image>", max_pixels), filename
    raise TypeError(f"expected an image path or a PIL.Image, got {type(source).__name__}")


def _load_remote(location: Location, max_pixels: int | None):
    """An image at a URL, decoded exactly as :func:`gpf.pipeline.images.load_image` decodes a file (from a temp
    copy); errors name the URL."""
    import tempfile

    from ..shards.storage import StorageError, StorageNotFoundError
    from .images import ImageError, load_image

    try:
        data = location.read_bytes()
    except StorageNotFoundError:
        raise ImageError(str(location), "missing", "no such object") from None
    except StorageError as exc:
        raise ImageError(str(location), "unreadable", str(exc).partition(": ")[2] or str(exc)) from None
    with tempfile.TemporaryDirectory(prefix="gpf-image-") as folder:
        copy = Path(folder) / (Path(location.name).name or "image")
        copy.write_bytes(data)
        try:
            return load_image(copy, max_pixels=max_pixels)
        except ImageError as exc:
            raise ImageError(str(location), exc.status, exc.reason.replace(str(copy), str(location))) from None


def _walk_url(location: Location, recursive: bool) -> Iterator[tuple[Location, str]]:
    """The image objects below a URL prefix (sorted by key, hidden names skipped), or the URL itself."""
    below = location.find(recursive)
    if not below:
        yield location, location.name
        return
    for relative in below:
        parts = relative.split("/")
        if not any(p.startswith(".") for p in parts) and Path(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS:
            yield location.join(relative), relative


def _walk_inputs(paths: Iterable[str | os.PathLike], recursive: bool) -> Iterator[tuple[Path, str]]:
    """``(file, id before de-duplication)`` of :func:`iter_image_files`; the id rule is :func:`named_image_files`'s.
    A URL gives :class:`~gpf.shards.storage.Location` files."""
    for given in paths:
        if is_url(given):
            yield from _walk_url(as_location(given), recursive)
            continue
        path = Path(given)
        if not path.is_dir():
            yield path, path.name
            continue
        for folder, subdirs, files in os.walk(path):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if recursive else []
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    file = Path(folder) / name
                    yield file, file.relative_to(path).as_posix()


def iter_image_files(paths: Iterable[str | os.PathLike], recursive: bool = True) -> Iterator[Path]:
    """Files named on the command line, and the image files of folders (sorted, hidden ones skipped).

    A file given explicitly is always yielded (a bad one is then reported by the
    scorer); inside folders only names with an extension of :data:`IMAGE_EXTENSIONS`.
    """
    for file, _ in _walk_inputs(paths, recursive):
        yield file


def unique_ids(ids: Sequence[str]) -> list[str]:
    """``ids`` made unique, deterministically: the first of equal ids keeps it, the k-th gets ``#k``.

    ``#k`` is the smallest k >= 2 that is neither an id of ``ids`` nor given
    already, so ``['a', 'a', 'a#2']`` becomes ``['a', 'a#3', 'a#2']``: no id
    depends on anything but the list itself.
    """
    taken = set(ids)
    seen: set[str] = set()
    out = []
    for image_id in ids:
        if image_id in seen:
            k = 2
            while f"{image_id}#{k}" in taken:
                k += 1
            image_id = f"{image_id}#{k}"
            taken.add(image_id)
        seen.add(image_id)
        out.append(image_id)
    return out


def named_image_files(paths: Iterable[str | os.PathLike], recursive: bool = True) -> list[NamedImage]:
    """The files of :func:`iter_image_files`, each with a unique id (``gpf predict``; docs/evaluation.md).

    The id is the path relative to the input it was found under: for a folder,
    the path below that folder with its extension and ``/`` separators
    (``a/photo.jpg``); for a file named directly, its file name
    (``photo.jpg``). A file reached through two inputs (``photos`` and
    ``photos/a``, or named twice) is scored once, under the id of the first
    input that reached it; different files whose ids still collide (the same
    name given from two folders) are told apart by :func:`unique_ids` in input
    order. The random crops stay seeded by :func:`image_id_of` (the file stem).
    """
    found, seen = [], set()
    for file, image_id in _walk_inputs(paths, recursive):
        key = file.url if isinstance(file, Location) else os.path.realpath(file)
        if key not in seen:
            seen.add(key)
            found.append((file, image_id))
    ids = unique_ids([image_id for _, image_id in found])
    return [NamedImage(image_id, file) for (file, _), image_id in zip(found, ids)]


#: What to do about a photo given for scoring where the dataset advice of
#: :data:`gpf.pipeline.images.STATUS_ADVICE` (image roots, label files) does not apply.
SCORING_ADVICE = {
    "missing": "check the path",
}


def scoring_error_text(exc) -> str:
    """The one-line text of an :class:`~gpf.pipeline.images.ImageError` met while scoring given photos:
    its own text, with the advice of :data:`SCORING_ADVICE` in place of the dataset advice (a missing
    file given by a relative path also names the absolute path looked for)."""
    from .images import STATUS_ADVICE

    text = str(exc)
    advice = SCORING_ADVICE.get(exc.status)
    if advice is None:
        return text
    if exc.status == "missing" and not os.path.isabs(exc.path):
        advice = f"{advice}: looked for {os.path.abspath(exc.path)}"
    return text.replace(STATUS_ADVICE[exc.status], advice)


# ----------------------------------------------------------------------------- attention only

def peripheral_of(image, geometry: ViewGeometry):
    """The peripheral view of an upright RGB image under ``geometry`` (PIL)."""
    from .images import peripheral_view

    return peripheral_view(image, geometry.view_size, stride=geometry.round_to, min_side=geometry.min_side)


def attention_view(att: AttentionModel, image, view_size: int | ViewGeometry) -> AttentionView:
    """Peripheral view, EB map, tau box and foveal view of one upright RGB image (as preprocess makes them;
    an int ``view_size`` means the current view rule, :class:`~gpf.model.geometry.ViewGeometry`)."""
    from .images import foveal_view

    geometry = view_size if isinstance(view_size, ViewGeometry) else ViewGeometry(int(view_size))
    periph = peripheral_of(image, geometry)
    attended = attend_views(att, [periph], [image.size])[0]
    return AttentionView(image=image, periph=periph, attended=attended,
                         fovea=foveal_view(image, attended.box, geometry.view_size))


# ----------------------------------------------------------------------------- checkpoints

def load_stage2_checkpoint(checkpoint) -> tuple[Checkpoint, Path]:
    """A stage-2 checkpoint (file or run folder) and its path, checked by :func:`gpf.pipeline.compat.check_self_consistent`.

    Refuses, with one line saying what to pass instead, a stage-1 checkpoint.
    """
    from ..model.checkpoint import load_checkpoint
    from .compat import check_self_consistent, checkpoint_location

    path = checkpoint_location(checkpoint)
    ckpt = load_checkpoint(path)
    path = public_url(checkpoint) if is_url(checkpoint) else path
    if ckpt.kind == "stage1":
        raise ScoringError(
            f"{path} is a stage-1 checkpoint (the peripheral attention model only): it predicts no score "
            "distribution. Pass a stage-2 checkpoint from `gpf train stage2`, which embeds this attention "
            "model (`gpf attention` accepts stage-1 checkpoints)")
    check_self_consistent(ckpt, str(path))
    return ckpt, path


# ----------------------------------------------------------------------------- the scorer

@dataclass
class _Work:
    """One photo on its way through a batch: ``id`` as reported, ``key`` seeding its random crops."""
    id: str
    path: str | None
    source: Any = None
    key: str | None = None
    status: str = "ok"
    error: str | None = None
    image: Any = None
    periph: Any = None                # PIL view; once attended, its JPEG round trip (uint8 [3, H, W])
    first: Any = None                            # the first column's input when not ``periph`` (``warp``)
    second: list = field(default_factory=list)   # foveal view, or the K random crops (then as periph)
    size: tuple[int, int] | None = None
    box: tuple[int, int, int, int] | None = None
    attn_fraction: float | None = None
    dist: np.ndarray | None = None

    def fail(self, status: str, error: str) -> None:
        self.status, self.error = status, error
        self.image = self.periph = self.first = None
        self.second = []


def _uint8(view):
    """``uint8 [3, H, W]`` of a view: a PIL image, or a tensor already (the baselines' JPEG round trips)."""
    import torch

    from .images import to_uint8_tensor

    return view if isinstance(view, torch.Tensor) else to_uint8_tensor(view)


def _new_work(item, index: int = 0) -> _Work:
    """A :class:`_Work` for a path, a PIL image or a :class:`NamedImage`: its reported id and its crop key."""
    source = item.source if isinstance(item, NamedImage) else item
    key = image_id_of(source, index)
    if isinstance(item, NamedImage) and not isinstance(source, (str, os.PathLike)) \
            and not getattr(source, "filename", None):
        key = item.id                      # an unnamed PIL image: its given id is all there is
    return _Work(item.id if isinstance(item, NamedImage) else key,
                 str(source) if isinstance(source, (str, os.PathLike)) else None, source=source, key=key)


class Scorer:
    """Scores photos with a stage-2 GPF-CNN and the attention model it embeds.

    ``random`` variant: the model was trained on one random view-size crop per
    image and epoch (Random-VGG16, after RAPID [17]), so its score is a random
    variable of the crop position. The scorer reports the expectation over
    positions, estimated by averaging the predicted distributions of
    ``random_crops`` (default 5) crops at seeded positions: deterministic,
    unbiased, and with ``K`` times less variance than one crop. A centre crop
    would be one fixed (and biased: photographers centre subjects) sample. The
    positions follow :func:`gpf.pipeline.images.random_crop_boxes` with the
    shards' preprocess seed and the photo's dataset id (:func:`image_id_of`,
    its file name without extension, whatever id its result is reported
    under), so a photo of the dataset gets the crops its shard stores.
    """

    def __init__(self, model, attention: AttentionModel, *, view_size: int, scores: Sequence[float],
                 threshold: float | None, device, random_crops: int = DEFAULT_RANDOM_CROPS, seed: int = 0,
                 max_pixels: int | None = None, workers: int = 0, source: str | None = None,
                 geometry: ViewGeometry | None = None, jpeg: tuple[int, str] = (JPEG_QUALITY, JPEG_CHROMA_SUBSAMPLING),
                 view_fit: str = VIEW_FIT, ids_seed_crops: bool = False):
        from ..vocabulary import DEFAULT_MAX_PIXELS

        if not isinstance(random_crops, int) or isinstance(random_crops, bool) or random_crops < 1:
            raise ScoringError(f"random_crops must be a positive int, got {random_crops!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ScoringError(f"workers must be an int >= 0 (0 = one per CPU core), got {workers!r}")
        if len(scores) != model.num_classes:
            raise ScoringError(f"{len(scores)} bucket scores for a model with {model.num_classes} buckets")
        self.device = device
        self.model = model.to(device).eval()
        self.attention = attention
        self.view_size = int(view_size)
        self.scores = tuple(float(s) for s in scores)
        self.threshold = threshold
        self.random_crops = random_crops
        self.seed = seed
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        self.workers = workers or os.cpu_count() or 1
        self.source = source
        # How `gpf preprocess` made the shards' views: their rule (the views are backbone-neutral; each
        # network gets them fitted, `view_fit`), and the JPEG encoding the networks read them through.
        self.geometry = geometry or ViewGeometry(self.view_size)
        if self.geometry.view_size != self.view_size:
            raise ScoringError(f"view geometry for {self.geometry.view_size} px views, but view_size is "
                               f"{self.view_size}")
        self.jpeg = (int(jpeg[0]), str(jpeg[1]))
        # A folder dataset's ids come from its CSV, not from file names: there the id a photo is given
        # (NamedImage, image_id=; `gpf predict`: its path below the folder given) seeds its crops.
        self.ids_seed_crops = bool(ids_seed_crops)
        self.jpeg_quality = self.jpeg[0]         # warp.jpg / orig.jpg round trips (the baselines' members)
        self.view_fit = view_fit
        self.fovea_source = model.fovea_source
        self._variant, self._backbone, self._tau = model.variant, model.spec.name, attention.tau
        self._peripheral_backbone = model.peripheral_spec.name
        self._first_view = model.first_view
        self._network = self   # the network steps (attend_batch, predict_batch): here, or elsewhere (detached)

    @classmethod
    def from_checkpoint(cls, checkpoint, device="auto", *, random_crops: int | None = None,
                        threshold: float | None = None, max_pixels: int | None = None,
                        workers: int = 0) -> "Scorer":
        """A scorer for a stage-2 checkpoint file or run folder (``best.pt``, else ``last.pt``).

        ``threshold`` overrides the checkpoint's high/low cut; ``device`` is
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a ``torch.device``.
        """
        ckpt, path = load_stage2_checkpoint(checkpoint)
        return cls.from_loaded(ckpt, device, source=str(path), random_crops=random_crops,
                               threshold=threshold, max_pixels=max_pixels, workers=workers)

    @classmethod
    def from_loaded(cls, ckpt: Checkpoint, device="auto", *, source: str | None = None,
                    random_crops: int | None = None, threshold: float | None = None,
                    max_pixels: int | None = None, workers: int = 0) -> "Scorer":
        """A scorer for a loaded stage-2 :class:`Checkpoint` (see :meth:`from_checkpoint`)."""
        from ..model.checkpoint import model_from_checkpoint
        from ..model.device import resolve_device
        from .compat import shard_geometry, shard_jpeg, trained_on

        device = resolve_device(device)
        model = model_from_checkpoint(ckpt)
        attention = AttentionModel.from_stage2_checkpoint(ckpt, device)
        run = trained_on(ckpt)
        return cls(model, attention, view_size=ckpt.view_size, scores=ckpt.scores,
                   threshold=ckpt.threshold if threshold is None else float(threshold), device=device,
                   random_crops=random_crops or DEFAULT_RANDOM_CROPS, seed=ckpt.shards_seed,
                   max_pixels=max_pixels, workers=workers, source=source,
                   geometry=shard_geometry(run, ckpt.view_size, attention.spec), jpeg=shard_jpeg(run),
                   view_fit=ckpt.view_fit, ids_seed_crops=run is not None and run.dataset == "folder")

    def _new_work(self, item, index: int = 0) -> _Work:
        work = _new_work(item, index)
        if self.ids_seed_crops and isinstance(item, NamedImage):
            work.key = item.id
        return work

    # -- properties
    @property
    def variant(self) -> str:
        return self._variant

    @property
    def uses_attention(self) -> bool:
        return self.fovea_source == "attention"

    def describe(self) -> dict:
        """Plain description for output metadata."""
        return {"checkpoint": self.source, "variant": self.variant, "backbone": self._backbone,
                "peripheral_backbone": self._peripheral_backbone,
                "scores": list(self.scores), "threshold": self.threshold, "view_size": self.view_size,
                "tau": self._tau,
                "random_crops": self.random_crops if self.fovea_source in ("random", "patch") else None,
                "view_round": self.geometry.round_to, "view_min_side": self.geometry.min_side,
                "view_fit": self.view_fit, "jpeg_quality": self.jpeg[0], "jpeg_subsampling": self.jpeg[1]}

    def detached(self, network=None) -> "Scorer":
        """A copy without the networks (light to send to another process) whose two network steps
        are ``network.attend_batch`` and ``network.predict_batch``, e.g. a Ray actor holding this
        scorer (``gpf predict --engine ray``): decoding, views and results stay with the copy, and
        the batches are formed as here, so the scores are the same. ``network=None``: set it later
        with another call."""
        import copy

        twin = copy.copy(self)
        twin.model = twin.attention = None
        twin._network = network
        return twin

    # -- the network steps (what a detached copy asks its network for)
    def attend_batch(self, periphs: list, sizes: list[tuple[int, int]]) -> list[Attended]:
        """EB maps and tau boxes of a batch of peripheral views (:func:`attend_views`)."""
        return attend_views(self.attention, periphs, sizes)


    # -- public scoring
    def score(self, image, image_id: str | None = None) -> ScoreResult:
        """Score one photo (path or PIL image). Raises ImageError when it cannot be decoded.

        ``image_id`` is the id reported (default :func:`image_id_of`); the random
        crops are seeded by the file's stem (AVA, Photo.net: the dataset id), or by
        ``image_id`` when the checkpoint was trained on a folder dataset, whose ids
        its CSV gives.
        """
        work = self._decode(self._new_work(NamedImage(image_id, image) if image_id else image), keep_error=True)
        self._score_batch([work])
        return self._result(work)

    def explain(self, image, image_id: str | None = None) -> tuple[ScoreResult, AttentionView]:
        """Score one photo and return the attention panels (for ``gpf attention``)."""
        from .images import foveal_view

        work = self._decode(self._new_work(NamedImage(image_id, image) if image_id else image), keep_error=True)
        full_image, periph = work.image, work.periph
        attended = attend_views(self.attention, [periph], [full_image.size])[0]
        self._score_batch([work], attended=[attended])
        view = AttentionView(image=full_image, periph=periph, attended=attended,
                             fovea=foveal_view(full_image, attended.box, self.view_size))
        return self._result(work), view

    def score_many(self, images: Iterable, batch_size: int = DEFAULT_BATCH_SIZE, *,
                   progress=None) -> Iterator[ScoreResult]:
        """Results of photos (paths, PIL images or :class:`NamedImage`) in input order, streaming.

        A path or PIL image is reported under :func:`image_id_of`, a
        :class:`NamedImage` under its ``id`` (``gpf predict`` passes
        :func:`named_image_files`).

        Decoding runs in a pool of ``workers`` threads (PIL releases the GIL),
        one batch ahead of the network, so at most two batches of decoded
        photos are in memory. A photo that cannot be decoded or scored comes
        back with its ``status`` and ``error``; nothing is raised for it.
        ``progress``: a :class:`gpf.pipeline.progress.Progress` to update.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ScoringError(f"batch_size must be a positive int, got {batch_size!r}")
        chunks = _chunks(enumerate(images), batch_size)
        with cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="gpf-score") as pool:
            pending = self._submit(pool, next(chunks, None))
            while pending:
                batch = [future.result() for future in pending]
                pending = self._submit(pool, next(chunks, None))
                yield from self._finish(batch, pool)
                if progress is not None:
                    progress.update(len(batch), failed=sum(w.status != "ok" for w in batch))

    # -- stages
    def _submit(self, pool: cf.Executor, chunk) -> list[cf.Future]:
        if not chunk:
            return []
        works = [self._new_work(src, i) for i, src in chunk]
        return [pool.submit(self._decode, w) for w in works]

    def _decode(self, work: _Work, keep_error: bool = False) -> _Work:
        """Full-resolution upright decode and the peripheral view (runs in a worker thread)."""
        from .images import ImageError

        try:
            work.image, path = load_source(work.source, self.max_pixels)
            work.path = work.path or path
            work.size = work.image.size
            work.periph = peripheral_of(work.image, self.geometry)
            if self._first_view == "warp":
                from .baselines import warped_input

                work.first = warped_input(work.image, self.view_size, self.jpeg_quality)
        except ImageError as exc:
            if keep_error:
                raise
            work.fail(exc.status, scoring_error_text(exc))
        except Exception as exc:  # an unforeseen file: report it, keep going
            if keep_error:
                raise
            work.fail("decode_error", f"{work.path or work.id}: {type(exc).__name__}: {exc}")
        finally:
            work.source = None
        return work

    def _finish(self, batch: list[_Work], pool: cf.Executor) -> list[ScoreResult]:
        ok = [w for w in batch if w.status == "ok"]
        if ok:
            try:
                self._score_batch(ok, pool)
            except NetworkLost:
                raise
            except Exception as exc:  # the network failed on this batch: report, go on
                for work in ok:
                    work.fail(SCORE_ERROR, f"{work.path or work.id}: scoring failed "
                                           f"({type(exc).__name__}: {exc})")
        return [self._result(w) for w in batch]

    def _score_batch(self, works: list[_Work], pool: cf.Executor | None = None,
                     attended: list[Attended] | None = None) -> None:
        """Attention boxes, second views and the predicted distributions of decoded photos."""
        if self.uses_attention:
            if attended is None:
                attended = self._network.attend_batch([w.periph for w in works], [w.size for w in works])
            for work, res in zip(works, attended):
                work.box, work.attn_fraction = res.box, res.attn_fraction
        mapper = pool.map if pool is not None else map
        for work, views in zip(works, mapper(self._network_views, works)):
            work.periph, work.second = views
        dists = self._network.predict_batch([w.periph if w.first is None else w.first for w in works],
                                            [w.second for w in works])
        for work, dist in zip(works, dists):
            work.dist = dist
            work.image = work.periph = work.first = None
            work.second = []

    def _network_views(self, work: _Work):
        """What the networks read of a photo: the JPEG round trip of its peripheral view and of its second
        views (foveal view, K random crops or none), decoded as the shard reader decodes (uint8 tensors)."""
        from ..shards.reader import decode_jpegs_uint8
        from .images import encode_jpeg

        quality, subsampling = self.jpeg
        seconds = self._second_views(work)
        if self.fovea_source == "patch":         # cut from orig.jpg's round trip already, as the reader cuts them
            encoded, ready = [work.periph], seconds
        else:
            encoded, ready = [work.periph, *seconds], []
        names = [f"{work.path or work.id} (view {k})" for k in range(len(encoded))]
        decoded = decode_jpegs_uint8([encode_jpeg(v, quality, subsampling) for v in encoded], names)
        return decoded[0], decoded[1:] + list(ready)

    def _second_views(self, work: _Work) -> list:
        """The foveal view (attention variants), K random crops (``random``) or nothing (``single``)."""
        from .images import foveal_view, random_crops

        source = self.fovea_source
        if source == "attention":
            return [foveal_view(work.image, work.box, self.view_size)]
        if source == "random":
            return random_crops(work.image, self.random_crops, self.view_size, self.seed, work.key)
        if source == "patch":
            from .baselines import test_patches

            return test_patches(work.image, self.view_size, self.jpeg_quality, self.seed, work.key,
                                self.random_crops)[0]
        return []

    def predict_batch(self, firsts: list, seconds: list[list]) -> np.ndarray:
        """Softmax distributions ``[B, N]`` (float64) of decoded uint8 views (the first column's and the
        second views of each photo), batched by first-view shape and scored by ``gpf evaluate``'s
        :func:`~gpf.pipeline.evaluation.predict_batch` (the ``random`` variants' averaged over their crops)."""
        from ..shards.reader import stack_decoded
        from .evaluation import predict_batch

        groups: dict[tuple, list[int]] = {}
        for index, view in enumerate(firsts):
            groups.setdefault(tuple(view.shape), []).append(index)
        dists = np.zeros((len(firsts), self.model.num_classes))
        for members in groups.values():
            count = len(seconds[members[0]])
            batch = {"periph": stack_decoded([firsts[i] for i in members]),
                     "second": [stack_decoded([seconds[i][k] for i in members]) for k in range(count)]}
            dists[members] = predict_batch(self.model, batch, self.device, self.view_fit)
        return dists

    def _result(self, work: _Work) -> ScoreResult:
        from ..model.metrics import mean_score, std_score

        if work.status != "ok":
            return ScoreResult(id=work.id, path=work.path, status=work.status, error=work.error)
        dist = work.dist / work.dist.sum()
        mean = float(mean_score(dist, self.scores))
        return ScoreResult(id=work.id, path=work.path, mean=mean, std=float(std_score(dist, self.scores)),
                           distribution=tuple(float(p) for p in dist),
                           high=None if self.threshold is None else bool(mean > self.threshold),
                           box=work.box, attn_fraction=work.attn_fraction, size=work.size)


# ----------------------------------------------------------------------------- one photo, any checkpoint

@dataclass
class Explanation:
    """The attention of one photo under a checkpoint, and its score when the checkpoint has one."""
    view: AttentionView
    tau: float
    result: ScoreResult | None          # None for a stage-1 checkpoint
    kind: str                           # 'stage1' | 'stage2'
    model: str                          # e.g. 'gpf tiny' or 'stage-1 tiny'
    variant: str | None = None          # the stage-2 variant; None for a stage-1 checkpoint
    crop_boxes: tuple = ()              # ``random`` variant: the crops (x0, y0, x1, y1) its score averages

    def title(self, image_id: str) -> str:
        if self.result is None:
            return f"{image_id}: attention of the {self.model} model (no score)"
        r = self.result
        verdict = "" if r.high is None else f", {'high' if r.high else 'low'}"
        return f"{image_id}: predicted mean score {r.mean:.2f} (std {r.std:.2f}{verdict}); {self.model}"


def _patch_boxes_on_photo(size: tuple[int, int], scorer: "Scorer", image_id: str) -> tuple:
    """The ``random`` variant's test patches (:func:`gpf.pipeline.baselines.test_patches`) as boxes on a
    photo of ``size`` (scaled back where ``orig.jpg`` enlarges a photo smaller than the view)."""
    from ..shards.layout import safe_key
    from ..shards.patches import test_patch_boxes
    from .images import original_view_size

    stored = original_view_size(size, scorer.view_size)
    boxes = test_patch_boxes(stored, scorer.view_size, scorer.seed, safe_key(image_id), scorer.random_crops)
    scale = (stored[0] / size[0], stored[1] / size[1], stored[0] / size[0], stored[1] / size[1])
    return tuple(tuple(round(v / f) for v, f in zip(box, scale)) for box in boxes)


def explain_photo(checkpoint, image, device="auto", *, tau: float | None = None, eb_layer: str | None = None,
                  contrastive: bool | None = None, view_size: int | None = None,
                  max_pixels: int | None = None) -> Explanation:
    """Attention map, tau box and foveal view of one photo (paper Fig. 4) under any gpf checkpoint.

    A stage-2 checkpoint uses its embedded attention model and also scores the
    photo; its tau, EB layer, contrastive flag and view size made its crops and
    cannot be overridden. A stage-1 checkpoint gives the attention only, with
    ``tau`` (default :data:`gpf.vocabulary.TAU`), ``eb_layer`` (default: the backbone's),
    ``contrastive`` and ``view_size`` (default: the checkpoint's, else 224).
    ``variant`` and, for ``random``, ``crop_boxes`` say what the model sees
    besides the whole photo (see :func:`gpf.pipeline.plots.attention_figure`).
    Raises ImageError when the photo cannot be decoded.
    """
    from ..model.checkpoint import load_checkpoint, model_from_checkpoint
    from ..model.device import resolve_device
    from ..vocabulary import DEFAULT_MAX_PIXELS

    if tau is not None and not 0 < tau <= 1:
        raise ScoringError(f"tau must be in (0, 1] (the paper uses {TAU}), got {tau}")
    if view_size is not None and view_size < 8:
        raise ScoringError(f"view size must be at least 8 pixels, got {view_size}")
    from .compat import checkpoint_location

    path = checkpoint_location(checkpoint)
    ckpt = load_checkpoint(path)
    device = resolve_device(device)
    if ckpt.kind == "stage2":
        given = [name for name, value in (("tau", tau), ("EB layer", eb_layer), ("contrastive", contrastive),
                                          ("view size", view_size)) if value is not None]
        if given:
            raise ScoringError(f"{path} is a stage-2 checkpoint: its embedded attention model fixes "
                               f"{', '.join(given)} (they made the crops it was trained on); drop those options")
        ckpt, _ = load_stage2_checkpoint(path)
        scorer = Scorer.from_loaded(ckpt, device, source=str(path), max_pixels=max_pixels)
        result, view = scorer.explain(image)
        crop_boxes = ()
        if scorer.model.fovea_source == "random":       # the crops Scorer._second_views makes for this photo
            from .images import random_crop_boxes

            crop_boxes = tuple(random_crop_boxes(view.image.size, scorer.random_crops, scorer.view_size,
                                                 scorer.seed, image_id_of(image)))
        elif scorer.model.fovea_source == "patch":      # its test patches, in the photo's pixels
            crop_boxes = _patch_boxes_on_photo(view.image.size, scorer, image_id_of(image))
        return Explanation(view, scorer.attention.tau, result, "stage2",
                           f"{scorer.variant} {scorer.model.spec.name}", scorer.variant, crop_boxes)
    model = model_from_checkpoint(ckpt)
    recorded = ckpt.view_geometry                   # what `gpf preprocess --stage1` would take from it
    att = AttentionModel.from_model(model, device=device, tau=TAU if tau is None else tau, eb_layer=eb_layer,
                                    contrastive=bool(contrastive), fit=recorded.get("view_fit", VIEW_FIT))
    geometry = ViewGeometry(int(view_size or ckpt.view_size or 224), recorded.get("view_round", VIEW_ROUND),
                            recorded.get("view_min_side", 1))
    full, _ = load_source(image, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    return Explanation(attention_view(att, full, geometry), att.tau, None, "stage1",
                       f"stage-1 {model.spec.name}")


# ----------------------------------------------------------------------------- Parquet output

def _parquet_schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("mean", pa.float64()), ("std", pa.float64()), ("distribution", pa.list_(pa.float64())),
        ("high", pa.bool_()), ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),
        ("attn_fraction", pa.float64()), ("status", pa.string()), ("error", pa.string()),
    ])


class ParquetResultWriter:
    """Streams :class:`ScoreResult` rows (``ScoreResult.as_dict`` columns) into a Parquet file.

    Rows are written in row groups of ``rows_per_group``, so memory stays flat
    for any number of photos; the file appears under its name only when
    :meth:`close` succeeds (temp file + rename), so a crash never leaves a
    half-written file that looks complete. ``metadata`` (plain JSON) is stored
    in the file's schema metadata under ``gpf``. ``path`` may be a URL: the file
    is then written locally and uploaded on :meth:`close`.
    """

    def __init__(self, path, metadata: dict | None = None, rows_per_group: int = 1024):
        import json
        import tempfile

        import pyarrow.parquet as pq

        self.location = as_location(path)
        if self.location.remote:
            self.path = self.location
            handle, tmp = tempfile.mkstemp(prefix="gpf-predict-", suffix=".parquet")
            os.close(handle)
            self._tmp = Path(tmp)
        else:
            self.path = self.location.local
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = temp_path(self.path)
        schema = _parquet_schema()
        if metadata:
            schema = schema.with_metadata({"gpf": json.dumps(metadata, sort_keys=True)})
        self._schema = schema
        self._writer = pq.ParquetWriter(self._tmp, schema)
        self._rows: list[dict] = []
        self._per_group = rows_per_group
        self.count = 0

    def write(self, result: ScoreResult) -> None:
        self._rows.append(result.as_dict())
        self.count += 1
        if len(self._rows) >= self._per_group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> Path | Location:
        self._flush()
        self._writer.close()
        if self.location.remote:
            try:
                self.location.put_file(self._tmp)
            finally:
                self._tmp.unlink(missing_ok=True)
            return self.location
        return commit(self._tmp, self.path)

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ParquetResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _chunks(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk

"""Bulk scoring on a Ray cluster (``gpf predict --engine ray LIST --out DIR``; docs/evaluation.md).

One chunk of the list is one Ray task calling :func:`gpf.pipeline.bulkscore.score_chunk`,
the function the local engine calls, with a scorer detached from its networks
(:meth:`gpf.pipeline.scoring.Scorer.detached`): decoding, views and the Parquet file in the
task, the attention and the stage-2 network in actors. Batches are formed per chunk as
the local engine forms them, so the chunks hold the same scores, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model.checkpoint import resolve_checkpoint_path
from .bulkscore import (DEFAULT_CHUNK_SIZE, BulkSummary, Chunk, done_chunks, plan_chunks, prepare_out,
                        read_photo_list, run_identity, score_chunk)
from .raycluster import (ClusterProgress, RayOptions, RemoteNetwork, UnitResult, check_same_environment,
                         check_worker, network_actors, plan_actors, probe_nodes, ray_session, retried_exceptions,
                         run_units, task_slots, worker_environment)
from .scoring import Scorer, load_stage2_checkpoint


class ScorerNetwork:
    """A scorer's two network steps in a Ray actor, and the digest of the checkpoint it loaded."""

    def __init__(self, scorer: Scorer, digest: str):
        self.scorer = scorer
        self.digest = digest

    def attend_batch(self, periphs, sizes):
        return self.scorer.attend_batch(periphs, sizes)

    def predict_batch(self, periphs, seconds):
        return self.scorer.predict_batch(periphs, seconds)


@dataclass(frozen=True)
class BuildScorer:
    """Picklable ``build(device)``: the scorer of a stage-2 checkpoint on a device, loaded from its
    absolute path (an actor's working folder is its own) and described by ``source``, the path as
    the local engine names it (the scores' metadata must not depend on the engine)."""
    checkpoint: str
    source: str
    random_crops: int | None = None
    threshold: float | None = None
    max_pixels: int | None = None

    @classmethod
    def of(cls, checkpoint, **options) -> "BuildScorer":
        path = resolve_checkpoint_path(checkpoint)
        return cls(str(path.resolve()), str(path), **options)

    def __call__(self, device) -> ScorerNetwork:
        ckpt, _ = load_stage2_checkpoint(self.checkpoint)
        scorer = Scorer.from_loaded(ckpt, device, source=self.source, random_crops=self.random_crops,
                                    threshold=self.threshold, max_pixels=self.max_pixels)
        return ScorerNetwork(scorer, ckpt.digest)


class _ActorNetwork:
    """A detached scorer's two network steps, run in the actors."""

    def __init__(self, network: RemoteNetwork):
        self.network = network

    def attend_batch(self, periphs, sizes):
        return self.network.call("attend_batch", periphs, sizes)

    def predict_batch(self, periphs, seconds):
        return self.network.call("predict_batch", periphs, seconds)


def chunk_task(chunk: Chunk, scorer: Scorer, out: str, batch_size: int, network: RemoteNetwork,
               environment: dict) -> UnitResult:
    """One chunk in a Ray task: :func:`score_chunk` with the networks in the actors."""
    check_worker(environment)
    counts = score_chunk(chunk, scorer.detached(_ActorNetwork(network)), out, batch_size)
    return UnitResult(outcome=chunk.name, node=worker_environment()["node"], images=sum(counts.values()),
                      counts=dict(counts))


def run_bulk_ray(source, out, build: BuildScorer, device: str = "auto", *, options: RayOptions | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, batch_size: int = 32, path_column: str | None = None,
                 workers: int = 1, progress: bool = True) -> BulkSummary:
    """Score every photo of ``source`` into ``out`` on a Ray cluster; the same files as
    :func:`gpf.pipeline.bulkscore.run_bulk_local` with the scorer ``build`` makes.

    ``workers``: decoding threads of each task (its ``--ray-task-cpus``)."""
    from ..model.device import resolve_device

    options = options or RayOptions()
    options.check()
    photos = read_photo_list(source, path_column)
    chunks = plan_chunks(photos, chunk_size)
    here = build(resolve_device("cpu"))
    scorer, digest = here.scorer, here.digest
    scorer.workers = max(1, workers)
    out = prepare_out(out, run_identity(source, path_column, chunk_size, batch_size, scorer, len(photos)))
    todo, counts = done_chunks(out, chunks)
    with ray_session(options.address) as ray:
        plan = plan_actors(ray, device, options)
        probes = probe_nodes(ray)
        with network_actors(ray, plan, build, options, digest) as (actors, reports):
            environment = ray.put(check_same_environment(reports + ray.get(probes)))
            bar = ClusterProgress(len(photos), "predict[ray]", enabled=progress)
            bar.skip(len(photos) - sum(len(c.photos) for c in todo))
            task = ray.remote(chunk_task).options(num_cpus=options.task_cpus, max_retries=options.retries,
                                                  retry_exceptions=retried_exceptions())
            cpu_half = ray.put(scorer.detached())

            def on_result(chunk: Chunk, result: UnitResult) -> None:
                counts.update(result.counts)
                bar.add(result)

            failed = run_units(ray, todo, lambda chunk: task.remote(chunk, cpu_half, str(out), batch_size,
                                                                     RemoteNetwork(actors, chunk.index), environment),
                               lambda chunk: chunk.name, on_result, window=task_slots(ray, plan, options))
            bar.close()
    written = len(todo) - len(failed)
    return BulkSummary(counts, written, len(chunks) - len(todo), len(chunks), out,
                       failed_chunks=failed)

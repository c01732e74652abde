"""The stage-1 pass on a Ray cluster (``gpf preprocess --engine ray``; docs/preprocess.md).

The same plan as the local engine (:func:`gpf.pipeline.preprocess.plan_run`):
one shard is one unit of work. Each shard runs in a Ray task that calls
:func:`gpf.pipeline.preprocess.process_shard`, the function the local engine
calls, with decode, views, JPEG encodes and the shard's files in the task and
the stage-1 network (Excitation Backprop, paper Eq. 2-3, and the Eq. 4 box) in
an actor: batches are formed per shard exactly as the local engine forms them,
so the output is byte-identical to ``--engine local`` in the same environment.

Ray Core tasks + actors rather than Ray Data: the unit of work is a whole shard
written atomically by the shard writer (a shard done = its stats file), which
is a task; Ray Data's blocks would re-batch images across shards and decide the
write granularity itself, losing both the byte-identity and the resume rule.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..model.device import resolve_device
from ..shards.storage import CarriedStorage, is_url
from .attend import attend_and_describe
from .preprocess import (PreparedRun, PreprocessConfig, PreprocessError, ShardContext, ShardOutcome, Summary,
                         _ShardJob, _validate, done_shard, finish_run, load_attention_model, open_run, plan_run,
                         process_shard)
from .raycluster import (ClusterProgress, RayOptions, RemoteNetwork, UnitResult, check_same_environment,
                         in_worker, network_actors, plan_actors, probe_nodes, ray_session, retried_exceptions,
                         run_units, task_slots, worker_environment)


class AttentionNetwork:
    """The stage-1 network in a Ray actor: ``attend`` is :func:`gpf.pipeline.attend.attend_and_describe`."""

    def __init__(self, att):
        self.att = att
        self.digest = att.digest

    def attend(self, views, original_sizes, feature_views=None):
        return attend_and_describe(self.att, views, original_sizes, feature_views)


@dataclass(frozen=True)
class BuildAttention:
    """Picklable ``build(device)`` for :class:`gpf.pipeline.raycluster.NetworkActor`: the actor loads
    the attention model as the driver did (:func:`load_attention_model`), from the same files."""
    cfg: PreprocessConfig

    @classmethod
    def of(cls, cfg: PreprocessConfig) -> "BuildAttention":
        """With the checkpoint and weights files as absolute paths (an actor's working folder is its own);
        URLs as they are (an actor reads them with the driver's storage options)."""
        stage1 = str(Path(cfg.stage1).resolve()) if cfg.stage1 and not is_url(cfg.stage1) else cfg.stage1
        weights = cfg.weights
        if not is_url(weights) and Path(weights).is_file():       # else a keyword (imagenet, none) or a URL
            weights = str(Path(weights).resolve())
        return cls(dataclasses.replace(cfg, stage1=stage1, weights=weights))

    def __call__(self, device) -> AttentionNetwork:
        return AttentionNetwork(load_attention_model(self.cfg, device))


def shard_task(job: _ShardJob, ctx: ShardContext, network: RemoteNetwork, environment: dict,
               threads: int, storage: CarriedStorage) -> UnitResult:
    """One shard in a Ray task: :func:`process_shard` with the network in the actors, writing to
    ``ctx.out`` (a folder or URL) with the driver's storage options (``storage``, in memory)."""

    def attend_fn(views, original_sizes, feature_views=None):
        return network.call("attend", views, original_sizes, feature_views)

    with in_worker(environment, storage), \
            cf.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gpf-decode") as pool:
        outcome = process_shard(job, ctx, attend_fn, pool)
    return UnitResult(outcome=outcome, node=worker_environment()["node"], images=outcome.images,
                      counts=dict(outcome.counts))


def run_preprocess_ray(cfg: PreprocessConfig, options: RayOptions | None = None) -> Summary:
    """Run (or resume) the stage-1 pass on a Ray cluster; the same files as :func:`run_preprocess`.

    Raises :class:`gpf.pipeline.preprocess.IncompleteRunError` (its summary naming them) when
    shards failed after their retries; the others are written and a rerun redoes the rest.
    """
    options = options or RayOptions()
    options.check()
    _validate(cfg)
    if cfg.num_nodes is not None or cfg.node_rank is not None:
        raise PreprocessError("--num-nodes/--node-rank split the shards between independent jobs; with "
                              "--engine ray the cluster schedules every shard itself: drop them")
    att, dataset = open_run(cfg, resolve_device("cpu"))
    storage = CarriedStorage.here()
    with ray_session(options.address) as ray:
        plan = plan_actors(ray, cfg.device, options)
        probes = probe_nodes(ray)    # while the actors start
        with network_actors(ray, plan, BuildAttention.of(cfg), options, att.digest, storage) as (actors, reports):
            environment = check_same_environment(reports + ray.get(probes))
            run = plan_run(cfg, att, dataset, environment)
            return _run_shards(ray, run, actors, options, task_slots(ray, plan, options), storage)


def _run_shards(ray, run: PreparedRun, actors, options: RayOptions, slots: int,
                storage: CarriedStorage) -> Summary:
    from ..shards.writer import done_shards

    outcomes: list[ShardOutcome] = []
    todo: list[tuple[int, _ShardJob]] = []
    progress = ClusterProgress(sum(len(j.items) for j in run.jobs), "preprocess[ray]", enabled=run.cfg.progress)
    done_before = done_shards(run.out)
    for number, job in enumerate(run.jobs):
        done = done_shard(done_before, job)
        if done is None:
            todo.append((number, job))
        else:
            outcomes.append(done)
            progress.skip(len(job.items))
    task = ray.remote(shard_task).options(num_cpus=options.task_cpus, max_retries=options.retries,
                                          retry_exceptions=retried_exceptions())
    ctx_ref, env_ref = ray.put(run.context), ray.put(run.environment)

    def submit(unit):
        number, job = unit
        return task.remote(job, ctx_ref, RemoteNetwork(actors, key=number), env_ref, options.task_threads, storage)

    def on_result(unit, result: UnitResult) -> None:
        outcomes.append(result.outcome)
        progress.add(result)

    failed = run_units(ray, todo, submit, lambda unit: unit[1].name, on_result, window=slots)
    progress.close()
    written = len(outcomes) - (len(run.jobs) - len(todo))
    return finish_run(run, outcomes, written, len(run.jobs), failed_shards=failed)

"""Ray for the engines that spread work over machines (``--engine ray``; docs/preprocess.md).

What the Ray engines of ``gpf preprocess`` and ``gpf predict`` share:

* :func:`ray_session` connects to a cluster (``--ray-address``, else
  ``RAY_ADDRESS``) or starts a local Ray bound to 127.0.0.1 only;
* the network runs in a pool of actors (:class:`NetworkActor`, one per GPU with
  ``num_gpus=1``, CPU actors where there is none, :func:`plan_actors`), which
  the CPU tasks call through :class:`RemoteNetwork`, preferring an actor on
  their own node;
* every worker's environment (library versions, PIL flavour, the actors'
  device type) is collected and must be one (:func:`check_same_environment`):
  byte-identical outputs need one environment, and it is the workers'
  environment, not the driver's, that a run records;
* :func:`run_units` is the driver's loop: work units are handed out
  dynamically (a fast node takes more), a unit whose worker dies is retried by
  Ray, a unit that still fails is named and the rest goes on;
  :class:`ClusterProgress` shows images/s, counts per status and per-node rates.

Ray is optional (the extra ``gpf[ray]``); nothing here imports it at module import.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from ..errors import GPFError
from ..shards.storage import CarriedStorage
from .progress import Progress

#: What to install for ``--engine ray``.
RAY_EXTRA = "gpf[ray]"
#: Set before a local Ray starts: Ray otherwise replaces a loopback node address by the
#: machine's interface address (``ray._private.services.resolve_ip_for_localhost``).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK = "127.0.0.1"
#: Ray's authentication settings; when none is set, gpf's local Ray gets a token of its own.
AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
#: Environment keys that may differ between workers: whether CUDA is available on a node
#: (a CPU-only node running decode tasks beside GPU nodes is fine; the actors' device type is compared).
PER_NODE_KEYS = ("cuda",)
#: How long the driver waits for the network actors to start (model load included).
ACTOR_START_TIMEOUT_S = 600
DEVICE_KINDS = ("auto", "cpu", "cuda")


class RayEngineError(GPFError):
    """The Ray engine cannot start or go on; the message says what to do."""


class WorkerEnvironmentError(RayEngineError):
    """Workers of one run differ in an environment that decides the output bytes."""


@dataclass
class RayOptions:
    """How the Ray engine uses the cluster (docs/preprocess.md, "Sizing a Ray cluster")."""
    address: str | None = None      # --ray-address; None: $RAY_ADDRESS, else a local Ray on 127.0.0.1
    actors: int | None = None       # network actors; None: one per GPU, else one per node
    actor_cpus: float = 1.0         # CPUs each actor reserves (its torch threads)
    task_cpus: float = 1.0          # CPUs each CPU task reserves (its decode/encode threads)
    retries: int = 3                # retries of a task whose worker died or that hit an I/O error
    actor_restarts: int = 3         # restarts of a network actor that died

    def check(self) -> None:
        problems = []
        if self.actors is not None and self.actors < 1:
            problems.append(f"--ray-actors must be at least 1, got {self.actors}")
        if self.actor_cpus < 0:
            problems.append(f"--ray-actor-cpus must be >= 0, got {self.actor_cpus}")
        if self.task_cpus <= 0:
            problems.append(f"--ray-task-cpus must be positive, got {self.task_cpus}")
        if self.retries < 0 or self.actor_restarts < 0:
            problems.append("retries and actor restarts must be >= 0")
        if problems:
            raise RayEngineError("; ".join(problems))

    @property
    def task_threads(self) -> int:
        """Decode/encode threads in one task: one per CPU it reserves."""
        return max(1, round(self.task_cpus))


# ----------------------------------------------------------------------------- connecting

def import_ray():
    """The ``ray`` module, or :class:`RayEngineError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayEngineError(f"--engine ray needs Ray, which is not installed here: install {RAY_EXTRA} "
                             f"(pip install '{RAY_EXTRA}'), or use --engine local") from None
    return ray


def check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Refuse, in one line and in bounded time, a ``host:port`` cluster address nothing listens on
    (``ray.init`` would retry for minutes). ``None``, ``auto`` and ``local`` are not probed."""
    import socket

    if not address or address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise RayEngineError(f"--ray-address {address!r} is not host:port (the head's address from "
                             "`ray start --head`, e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RayEngineError(f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); check "
                             "--ray-address or RAY_ADDRESS and that `ray start --head` runs there") from None


@contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Ray, connected: to ``address``, else ``$RAY_ADDRESS``, else to a local Ray started here.

    A local Ray listens on 127.0.0.1 only (checked: every node's ``NodeManagerAddress``),
    authenticates with a token that lives in its processes' environment only (unless
    ``RAY_AUTH_*`` say otherwise; nothing is written under ``~/.ray``) and stops when the
    block ends. A connection that was open before is reused and kept.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None and not _connected():
        with _local_ray_environment():
            ray = import_ray()
            ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK,
                     log_to_driver=False, configure_logging=False)
            try:
                check_loopback(ray)
                yield ray
            finally:
                ray.shutdown()
        return
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise RayEngineError(f"cannot connect to the Ray cluster at {address}: {exc}; check --ray-address "
                             "or RAY_ADDRESS (the head's host:port from `ray start --head`)") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _connected() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and bool(getattr(ray, "is_initialized", lambda: False)())


@contextmanager
def _local_ray_environment() -> Iterator[None]:
    """The environment a local Ray starts in (its daemons inherit it), restored afterwards:
    :data:`LOOPBACK_ENV`, and a fresh token (:data:`AUTH_ENV`) when none is configured."""
    changes = dict(LOOPBACK_ENV)
    if not any(name in os.environ for name in AUTH_ENV):
        changes.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    constants = sys.modules.get("ray._private.ray_constants")   # Ray imported before: its constant is read
    enabled = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    try:
        import_ray()
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
        yield
    finally:
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = enabled
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_loopback(ray) -> None:
    """Refuse a local Ray whose nodes listen anywhere but 127.0.0.1."""
    other = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n["NodeManagerAddress"] != LOOPBACK})
    if other:
        raise RayEngineError(f"the local Ray started on {', '.join(other)}, not {LOOPBACK} only; set "
                             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported, or start a "
                             "cluster yourself (`ray start --head`) and pass --ray-address")


def alive_nodes(ray) -> list[dict]:
    """The cluster's live nodes that have CPUs, in a fixed order."""
    return sorted((n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0),
                  key=lambda n: n["NodeID"])


# ----------------------------------------------------------------------------- environments

def worker_environment(device_type: str | None = None) -> dict:
    """This worker's node address and :func:`gpf.env_info.environment_summary` (and device type, for actors)."""
    from ..env_info import environment_summary

    report = {"node": _node_address(), "environment": environment_summary()}
    if device_type is not None:
        report["device"] = device_type
    return report


def _node_address() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return "local"


def comparable(environment: dict) -> dict:
    """The part of an environment that must be the same on every worker."""
    return {k: v for k, v in environment.items() if k not in PER_NODE_KEYS}


def check_same_environment(reports: Sequence[dict]) -> dict:
    """The one environment of ``reports`` (from :func:`worker_environment`), ``cuda`` set to None and
    ``device`` the actors' device type; :class:`WorkerEnvironmentError` naming the differences otherwise."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for report in reports:
        groups[json.dumps(comparable(report["environment"]), sort_keys=True)].append(report)
    devices = sorted({r["device"] for r in reports if "device" in r})
    if len(groups) > 1:
        envs = [comparable(members[0]["environment"]) for members in groups.values()]
        keys = sorted({k for env in envs for k in env if any(e.get(k) != env.get(k) for e in envs)})
        detail = "; ".join(f"{_values(members[0], keys)} on {', '.join(sorted({m['node'] for m in members}))}"
                           for members in groups.values())
        raise WorkerEnvironmentError(
            f"the Ray workers' environments differ ({detail}); one run needs one environment for "
            "byte-identical output: install the same versions on every node (or run on the nodes that agree)")
    if len(devices) > 1:
        raise WorkerEnvironmentError(f"the network actors run on different device types ({', '.join(devices)}); "
                                     "pass --device cpu or --device cuda so that all use one")
    if not reports:
        raise RayEngineError("no Ray worker reported its environment")
    return dict(reports[0]["environment"], device=devices[0] if devices else "cpu", cuda=None)


def _values(report: dict, keys: Sequence[str]) -> str:
    env = comparable(report["environment"])
    return ", ".join(f"{k}={json.dumps(env.get(k), sort_keys=True)}" for k in keys)


@contextmanager
def in_worker(expected: dict, storage: CarriedStorage) -> Iterator[None]:
    """A task's body: refuse another environment than the run's (:func:`check_worker`), then work with
    the driver's storage options and credentials (:class:`gpf.shards.storage.CarriedStorage`)."""
    check_worker(expected)
    with storage.applied():
        yield


def check_worker(expected: dict) -> None:
    """In a task: refuse to work in another environment than the run's (a node that joined later)."""
    run = {k: v for k, v in expected.items() if k != "device"}
    mine = worker_environment()
    if comparable(mine["environment"]) != comparable(run):
        check_same_environment([mine, {"node": "the run's other workers", "environment": run}])


def probe_nodes(ray) -> list:
    """Ask one worker on every live node for its :func:`worker_environment` (``ray.get`` the list)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(worker_environment)
    return [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote() for n in alive_nodes(ray)]


# ----------------------------------------------------------------------------- the network's actors

@dataclass(frozen=True)
class ActorPlan:
    count: int
    num_gpus: int
    num_cpus: float
    device: str                    # 'cuda' | 'cpu'

    def describe(self) -> str:
        kind = "GPU" if self.num_gpus else "CPU"
        return f"{self.count} {kind} actor(s), {self.num_cpus:g} CPU each"


def plan_actors(ray, device: str, options: RayOptions) -> ActorPlan:
    """How many network actors, on what: one per GPU for ``auto``/``cuda`` when the cluster has GPUs,
    else CPU actors (one per node unless ``options.actors``)."""
    kind = device.split(":")[0] if isinstance(device, str) else str(device)
    if kind not in DEVICE_KINDS:
        raise RayEngineError(f"--device {device!r} with --engine ray: choose one of {', '.join(DEVICE_KINDS)} "
                             "(Ray gives each GPU actor its own GPU)")
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    if kind == "cuda" and gpus < 1:
        raise RayEngineError("--device cuda, but the Ray cluster has no GPU; use --device cpu or auto")
    if kind != "cpu" and gpus >= 1:
        plan = ActorPlan(options.actors or gpus, 1, options.actor_cpus, "cuda")
    else:
        plan = ActorPlan(options.actors or len(alive_nodes(ray)), 0, options.actor_cpus, "cpu")
    if plan.count * plan.num_cpus + options.task_cpus > cpus:
        raise RayEngineError(
            f"{plan.describe()} and a task of {options.task_cpus:g} CPU need more than the cluster's {cpus:g} "
            "CPUs; lower --ray-actors, --ray-actor-cpus or --ray-task-cpus")
    return plan


def task_slots(ray, plan: ActorPlan, options: RayOptions) -> int:
    """How many CPU tasks to keep in flight: the cluster's CPUs the actors leave, per task.

    Never more: a task waiting for an actor hands its CPU back to Ray, which would then start
    yet another worker process for a queued task (and stop idle ones), oversubscribing the CPUs.
    """
    cpus = float(ray.cluster_resources().get("CPU", 1)) - plan.count * plan.num_cpus
    return max(1, int(cpus // options.task_cpus))


class NetworkActor:
    """A network on one device, built in the actor by ``build(device)``; ``run(method, ...)`` calls it.

    ``build`` is small (a config and file paths or URLs, not weights): each actor loads the network
    itself (a URL with the driver's storage options, ``storage``), and reports its weights' ``digest``
    so that the driver can check that every
    node read the same files. Wrapped by :func:`network_actors` as a Ray actor (restarted
    when it dies; the calls in flight are retried, so every method must be a pure function
    of its arguments).
    """

    def __init__(self, build: Callable, device: str, threads: int, storage: CarriedStorage | None = None):
        import torch

        from ..model.device import resolve_device

        torch.set_num_threads(max(1, threads))
        self.device = resolve_device(device)
        with (storage or CarriedStorage()).applied():    # a checkpoint at a URL is read here
            self.network = build(self.device)

    def environment(self) -> dict:
        return dict(worker_environment(self.device.type), digest=getattr(self.network, "digest", None))

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, method: str, *args, **kwargs):
        return getattr(self.network, method)(*args, **kwargs)


@contextmanager
def network_actors(ray, plan: ActorPlan, build: Callable, options: RayOptions, digest: str | None = None,
                   storage: CarriedStorage | None = None) -> Iterator[tuple[list, list[dict]]]:
    """``plan.count`` network actors running ``build(device)`` for the block: (actors, their environment
    reports); refuses actors whose weights' digest is not ``digest`` (the driver's). ``storage`` goes to
    each actor in its constructor's arguments (:class:`gpf.shards.storage.CarriedStorage`). The actors
    are killed when the block ends."""
    actor_class = ray.remote(NetworkActor).options(
        num_gpus=plan.num_gpus, num_cpus=plan.num_cpus, max_restarts=options.actor_restarts,
        max_task_retries=options.actor_restarts)
    handles = [actor_class.remote(build, plan.device, max(1, round(plan.num_cpus)), storage)
               for _ in range(plan.count)]
    try:
        try:
            reports = ray.get([a.environment.remote() for a in handles], timeout=ACTOR_START_TIMEOUT_S)
            nodes = ray.get([a.node_id.remote() for a in handles], timeout=ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise RayEngineError(f"the {plan.describe()} did not start within {ACTOR_START_TIMEOUT_S} s: the "
                                 "cluster lacks the resources (see `ray status`); lower --ray-actors") from None
        except ray.exceptions.RayActorError as exc:
            raise RayEngineError(f"a network actor could not start: {_one_line(exc)}") from None
        if digest is not None:
            check_same_weights(reports, digest)
        yield [RemoteActor(node, handle) for node, handle in zip(nodes, handles)], reports
    finally:
        for handle in handles:
            ray.kill(handle)


def check_same_weights(reports: Sequence[dict], digest: str) -> None:
    """Every actor loaded the weights the driver loaded (the same checkpoint file on every node)."""
    other = sorted({f"{r['node']} ({r.get('digest')})" for r in reports if r.get("digest") != digest})
    if other:
        raise WorkerEnvironmentError(
            f"network actors on {', '.join(other)} loaded other weights than this machine (digest {digest}): "
            "the checkpoint or weights file differs between the nodes; put the same file at the same path "
            "on every node (or on a shared file system)")


@dataclass(frozen=True)
class RemoteActor:
    node: str          # Ray node id where the actor runs
    handle: Any


class RemoteNetwork:
    """The network actors as a task sees them: ``call(method, ...)`` on an actor of this task's node
    when there is one (``key`` spreads tasks over them), failing over to the others.

    An actor lost for good (its restarts used up) raises :class:`gpf.pipeline.preprocess.NetworkLost`,
    so the task fails and Ray retries it, instead of writing its images as failures. An error the
    network raised on a batch comes back as itself (the batch is at fault, as in the local engine).
    """

    def __init__(self, actors: Sequence[RemoteActor], key: int = 0):
        self.actors = list(actors)
        self.key = key

    def candidates(self) -> list[RemoteActor]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        local = [a for a in self.actors if a.node == node]
        first = local or self.actors
        start = self.key % len(first)
        ordered = first[start:] + first[:start]
        return ordered + [a for a in self.actors if a not in ordered]

    def call(self, method: str, *args, **kwargs):
        import ray

        from .attend import NetworkLost

        lost = []
        for actor in self.candidates():
            try:
                return ray.get(actor.handle.run.remote(method, *args, **kwargs))
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                lost.append(f"{type(exc).__name__}")
        raise NetworkLost(f"every network actor is gone ({', '.join(lost)})")


# ----------------------------------------------------------------------------- the driver's loop

def retried_exceptions() -> list[type]:
    """Errors raised in a task after which Ray tries it again (as after its worker died): the
    network's actors lost for good, an I/O error. Any other error is the unit's own: no retry."""
    from .attend import NetworkLost

    return [NetworkLost, OSError]


@dataclass
class UnitResult:
    """What a unit's task sends back: its outcome, where it ran and how many images it did."""
    outcome: Any
    node: str
    images: int
    counts: dict


def run_units(ray, units: Sequence, submit: Callable[[Any], Any], name: Callable[[Any], str],
              on_result: Callable[[Any, UnitResult], None], window: int) -> list[str]:
    """Submit ``units`` (at most ``window`` in flight, so the free workers take the next one) and
    hand each result to ``on_result``; returns the units that failed after their retries as
    ``'name: error'``. A :class:`gpf.errors.GPFError` raised in a task (a worker in another
    environment) stops the run: it is raised here, the other tasks cancelled."""
    pending: dict = {}
    todo = iter(units)
    failed: list[str] = []

    def refill() -> None:
        while len(pending) < window:
            unit = next(todo, None)
            if unit is None:
                return
            pending[submit(unit)] = unit

    refill()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                unit = pending.pop(ref)
                try:
                    on_result(unit, ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, GPFError):
                        raise cause from None
                    failed.append(f"{name(unit)}: {_one_line(cause or exc)}")
                except ray.exceptions.RayError as exc:
                    failed.append(f"{name(unit)}: {_one_line(exc)}")
            refill()
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
    return failed


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


class ClusterProgress:
    """The driver's progress: images/s overall, counts per status and images/s per node."""

    def __init__(self, total: int, label: str, enabled: bool = True):
        self.progress = Progress(total, label, enabled=enabled)
        self.counts: Counter = Counter()
        self.per_node: Counter = Counter()
        self.start = time.perf_counter()

    def skip(self, n: int) -> None:
        self.progress.skip(n)

    def add(self, result: UnitResult) -> None:
        self.counts.update(result.counts)
        self.per_node[result.node] += result.images
        failed = sum(v for k, v in result.counts.items() if k != "ok")
        self.progress.update(result.images, failed=failed, **self.fields())

    def fields(self) -> dict[str, str]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        status = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        nodes = " ".join(f"{node} {n / elapsed:.1f}/s" for node, n in sorted(self.per_node.items()))
        return {"status": status, "nodes": nodes}

    def node_lines(self) -> list[str]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return [f"node {node}: {n} images, {n / elapsed:.1f} img/s" for node, n in sorted(self.per_node.items())]

    def close(self) -> None:
        self.progress.close()

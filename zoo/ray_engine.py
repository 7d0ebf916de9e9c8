"""Ray engine for the feature cache: chunks run on a warm actor pool, written in order by the caller.

Registered as ``engine="ray"`` in `zoo.engines`. A `RayEngine` keeps its actors from one call to
the next (each actor keeps the onnxruntime sessions of the last extractors it ran), so a sweep or a
second extraction pays the pool's start once; `close()`, or leaving a ``with RayEngine() as
engine:`` block, ends them. Each actor reads its chunks through the data source's own `chunks` and
runs them with `zoo.engines.run_extractor`, as the local engine does, so the features are the same.
A chunk whose actor or node is lost is computed again on an actor that is left. `RayEngine.last_run`
says what the last call did: where each chunk ran, how long the pool took to start, and whether the
local engine would have been faster.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from zoo.engines import Computed, run_extractor
from zoo.errors import EngineError, InputError, ZooError, require

__all__ = ["RayEngine", "RayRun"]

# Chunks each actor holds at once: one running, one queued behind it, so it never waits for the
# caller between chunks.
DEPTH = 2
# Chunks computed ahead of the one the caller writes next, per actor: bounds the memory held by
# results that wait for a slow earlier chunk.
AHEAD = 4
# Times one chunk is tried when the actor or node computing it is lost.
ATTEMPTS = 3
# Extractors (onnxruntime sessions) an actor keeps for later calls.
KEPT_EXTRACTORS = 2
# Seconds a new pool may take before one of its actors answers (no CPU free for it: other jobs).
START_TIMEOUT_S = 300.0


@dataclass
class RayRun:
    """What one `RayEngine.computed` call did, for the user and the tests.

    Attributes:
        actors: actors that computed chunks.
        cluster_nodes: alive nodes in the Ray cluster.
        chunk_nodes: the Ray node id that computed each chunk, in order.
        connect_s: seconds spent starting or joining Ray (0 when this process had already).
        pool_start_s: seconds from creating the actors to every one of them answering (process
            start, imports); None when the pool was warm from an earlier call.
        setup_s: the longest an actor spent loading this call's extractor (its onnxruntime
            session); 0 when every actor had it from an earlier call.
        compute_s: seconds the actors spent computing, summed over chunks.
        wall_s: seconds from the call to its last chunk, connecting included.
        rows: inputs consumed.
        retried: chunks computed again because their actor or node was lost.
        lost_actors: actors lost during the call.
    """

    actors: int = 0
    cluster_nodes: int = 0
    chunk_nodes: list[str] = field(default_factory=list)
    connect_s: float = 0.0
    pool_start_s: float | None = None
    setup_s: float = 0.0
    compute_s: float = 0.0
    wall_s: float = 0.0
    rows: int = 0
    retried: int = 0
    lost_actors: int = 0

    @property
    def nodes(self) -> dict[str, int]:
        """Chunks computed per node id."""
        counts: dict[str, int] = {}
        for node in self.chunk_nodes:
            counts[node] = counts.get(node, 0) + 1
        return counts

    def local_estimate_s(self) -> float:
        """About how long the local engine would have taken: the same compute and one model load."""
        return self.compute_s + self.setup_s

    def local_faster(self) -> bool:
        """Whether the local engine would clearly have been faster: one node, and starting Ray took
        more than the work itself (the estimate under two thirds of the time this call took)."""
        return self.cluster_nodes <= 1 and self.wall_s > 1.5 * self.local_estimate_s() + 0.5

    def summary(self) -> str | None:
        """One line on how the pool started and, for a small job, whether `--engine local` pays more;
        None when the pool was warm and there is nothing to say."""
        if self.pool_start_s is None and not self.local_faster():
            return None
        nodes = len(self.nodes) or self.cluster_nodes
        started = ("warm pool" if self.pool_start_s is None else
                   f"actor pool started in {self.pool_start_s:.1f} s")
        line = (f"ray: {self.actors} actor{'s' * (self.actors != 1)} on {nodes} node{'s' * (nodes != 1)}, "
                f"{started}")
        if self.connect_s >= 0.1:
            line += f" (+{self.connect_s:.1f} s starting Ray)"
        line += f"; {self.rows} rows computed in {self.compute_s:.1f} s of actor time"
        if self.local_faster():
            line += (f"; --engine local would have been faster for a job this small on one node "
                     f"(about {self.local_estimate_s():.1f} s against {self.wall_s:.1f} s)")
        return line

    @classmethod
    def total(cls, runs: list[RayRun]) -> RayRun:
        """The calls of one command (a sweep's layers) as one: sums, and the pool's start once."""
        starts = [r.pool_start_s for r in runs if r.pool_start_s is not None]
        return cls(
            actors=max((r.actors for r in runs), default=0),
            cluster_nodes=max((r.cluster_nodes for r in runs), default=0),
            chunk_nodes=[node for r in runs for node in r.chunk_nodes],
            connect_s=sum(r.connect_s for r in runs),
            pool_start_s=sum(starts) if starts else None,
            **{name: sum(getattr(r, name) for r in runs)
               for name in ("setup_s", "compute_s", "wall_s", "rows", "retried", "lost_actors")},
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("chunk_nodes")
        out["nodes"] = self.nodes
        out["local_faster"] = self.local_faster()
        return out


class RayEngine:
    """Run a feature extraction on a warm Ray actor pool: one onnxruntime session per actor.

    Each actor reads its chunks itself (an .npy slice, image files, a Parquet row group) with the
    same code as the in-process path, so the features are the same; this process writes them
    into the feature cache in order, so a run resumes at the first chunk missing. The actors stay
    up between calls until `close()`: the second call on one engine starts at once. Files are read
    where the actors run: on a cluster of several machines the data must sit at the same path on
    every node (a shared file system); arrays in memory and the model are sent through Ray. The
    nodes need zoo and onnxruntime installed, like this machine.

    >>> with RayEngine(actors=2) as engine:                                     # doctest: +SKIP
    ...     zoo.extract_features(extractor, "train.parquet", engine=engine)
    ...     zoo.extract_features(extractor, "test.parquet", engine=engine)     # the same actors

    Attributes:
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``); None uses
            the Ray already initialised in this process, ``$RAY_ADDRESS``, or a new local instance.
        actors: actors in the pool; None fills the cluster's CPUs (CPUs // threads).
        threads: onnxruntime intra-op threads per actor, and CPUs Ray reserves for it. Set
            explicitly because Ray sets ``OMP_NUM_THREADS=1`` in its workers.
        last_run: what the last call did (`RayRun`), None before the first.
        runs: what every call did, oldest first (`RayRun.total(engine.runs)` sums them).
    """

    def __init__(self, address: str | None = None, actors: int | None = None, threads: int = 1) -> None:
        import importlib.util

        if actors is not None and (isinstance(actors, bool) or not isinstance(actors, int) or actors < 1):
            raise InputError(f"actors={actors!r} must be a whole number of at least 1")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads={threads!r} must be a whole number of at least 1")
        if importlib.util.find_spec("ray") is None:  # say so now, not after reading the data
            require("ray", "ray")
        self.address, self.actors, self.threads = address, actors, threads
        self.last_run: RayRun | None = None
        self.runs: list[RayRun] = []
        self._pool: _Pool | None = None
        self._model: tuple[tuple, Any] | None = None  # (file identity, ObjectRef of its bytes)

    @classmethod
    def named(cls) -> RayEngine:
        """The engine ``engine="ray"`` names: one per process, so its pool stays warm across calls."""
        global _SHARED
        with _SHARED_LOCK:
            if _SHARED is None:
                _SHARED = cls()
            return _SHARED

    def __repr__(self) -> str:
        return f"RayEngine(address={self.address!r}, actors={self.actors!r}, threads={self.threads!r})"

    def summary(self) -> str | None:
        """One line on this engine's calls so far (`RayRun.summary`), None before any or when warm."""
        return RayRun.total(self.runs).summary() if self.runs else None

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the pool's actors (their CPUs go back to the cluster); the next call starts a new pool."""
        pool, self._pool, self._model = self._pool, None, None
        if pool is not None:
            pool.close()

    def computed(self, source: Any, extractor: Any, start: int, chunk_size: int) -> Iterator[Computed]:
        """(first row, inputs consumed, features or None, skipped) of each chunk from `start`, in order.

        Checks the data and the extractor and connects to Ray at once; the chunks come as iterated.
        """
        began = time.perf_counter()
        ranges = _ranges(source, start, chunk_size)
        pickled = _pickled(extractor)
        ray, connect_s = _connect(self.address)
        return self._results(ray, source, extractor, pickled, ranges, RayRun(connect_s=connect_s), began)

    # -- the pool ----------------------------------------------------------------------------------

    def _warm_pool(self, ray: Any) -> tuple[_Pool, bool]:
        """The pool of earlier calls when it still has actors in this Ray session, else a new one
        (and True): as many actors as asked, or as the cluster has CPUs for, whatever the job's size,
        so a later call finds them all warm."""
        pool = self._pool
        if pool is not None and (pool.session != _session(ray) or not pool.actors):
            pool.close()
            pool = self._pool = None
        if pool is not None:
            return pool, False
        cpus = int(ray.cluster_resources().get("CPU", 0))
        actors = self.actors or max(1, cpus // self.threads)
        if actors * self.threads > cpus:
            raise InputError(
                f"{actors} actors of {self.threads} thread(s) need {actors * self.threads} CPUs but the Ray "
                f"cluster has {cpus}; give fewer actors (`--actors`) or threads (`--threads`)"
            )
        # Warm pools of other engines in this process hold CPUs until closed: close the idle ones
        # when this pool would not fit beside them.
        if ray.available_resources().get("CPU", 0) < actors * self.threads:
            for other in list(_POOLS):
                if not other.busy:
                    other.close()
        self._pool = _Pool(ray, actors, self.threads)
        return self._pool, True

    def _model_ref(self, ray: Any, extractor: Any) -> Any:
        """The cut model's bytes in Ray's object store (for nodes without the file), put once per file."""
        from zoo.extract import Extractor

        if not isinstance(extractor, Extractor) or not extractor.model_path.is_file():
            return None
        stat = extractor.model_path.stat()
        identity = (str(extractor.model_path), stat.st_size, stat.st_mtime_ns)
        if self._model is None or self._model[0] != identity:
            self._model = (identity, ray.put(extractor.model_path.read_bytes()))
        return self._model[1]

    def _results(self, ray: Any, source: Any, extractor: Any, pickled: bytes, ranges: list[tuple[int, int]],
                 run: RayRun, began: float) -> Iterator[Computed]:
        if not ranges:
            return
        pool, new = self._warm_pool(ray)
        pool.busy = True
        self.last_run = run
        self.runs.append(run)
        try:
            # A new pool's actors start in the background while the work goes into the object store.
            work = _Work(
                token=os.urandom(8).hex(),
                key=hashlib.sha256(pickled).hexdigest(),
                source=ray.put(source),
                extractor=ray.put(pickled),
                model=self._model_ref(ray, extractor),
            )
            run.cluster_nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
            yield from _Dispatch(ray, pool, work, ranges, run, began, new).results()
        except (ZooError, GeneratorExit):
            raise
        except Exception as exc:  # Ray wraps what its workers raise; show the user's error as is
            raise _unwrapped(exc) from None
        finally:
            pool.busy = False


class _Dispatch:
    """One call on a pool: chunks handed to the actors that are up, results given back in order.

    Each actor holds up to DEPTH chunks; a chunk is given only to an actor that has answered, so
    an actor that never starts (no CPU free for it) holds nothing up. A chunk whose actor or node
    is lost goes back to the front of the queue for another actor.
    """

    def __init__(self, ray: Any, pool: _Pool, work: _Work, ranges: list[tuple[int, int]], run: RayRun,
                 began: float, new: bool) -> None:
        self.ray, self.pool, self.work, self.ranges, self.run = ray, pool, work, ranges, run
        self.began, self.new = began, new
        self.todo = list(range(len(ranges)))  # a heap of chunk indexes to give out: retried ones first
        self.attempts = [0] * len(ranges)
        self.running: dict[Any, tuple[int, Any]] = {}  # ObjectRef -> (chunk index, actor)
        self.done: dict[int, dict[str, Any]] = {}
        self.used: set[Any] = set()
        self.lost = _lost_errors(ray)

    def results(self) -> Iterator[Computed]:
        following = 0  # the next chunk the caller gets
        replaced = 0
        try:
            while following < len(self.ranges):
                self._give_out(following)
                waiting = [*self.running, *self.pool.pending]
                if not waiting:  # every actor was lost
                    if replaced >= 2:
                        raise EngineError(
                            "the Ray actors were lost three times (nodes gone?); check the cluster (`ray status`); "
                            "the chunks already written are kept, run again to resume")
                    replaced += 1
                    self.pool.grow()
                    continue
                # Waiting on the actors' answers to ready() too: when the last comes, the pool is up.
                # Until one actor is up, waiting is bounded: a pool with no CPU free never starts.
                timeout = None if self.pool.ready else max(0.0, self.pool.start_deadline - time.monotonic())
                finished, _ = self.ray.wait(waiting, num_returns=1, timeout=timeout)
                if not finished:
                    raise self.pool.not_started()
                for ref in finished:
                    if ref in self.pool.pending:
                        if self.pool.answered(ref) and self.new:
                            self.run.pool_start_s = self.pool.start_s
                    else:
                        self._collect(ref)
                while following in self.done:
                    result = self.done.pop(following)
                    if result["error"]:
                        raise _error(result["error"])
                    self._note(result)
                    following += 1
                    yield result["first"], result["consumed"], result["features"], result["skipped"]
        finally:
            for ref in self.running:  # the caller stopped early (a write failed): stop queued chunks
                with contextlib.suppress(Exception):
                    self.ray.cancel(ref)

    def _give_out(self, following: int) -> None:
        window = following + AHEAD * max(1, len(self.pool.ready))
        for actor in sorted(self.pool.ready, key=self.pool.load.__getitem__):
            while self.pool.load[actor] < DEPTH and self.todo and self.todo[0] < window:
                index = heapq.heappop(self.todo)
                lo, hi = self.ranges[index]
                self.running[actor.run.remote(self.work, lo, hi)] = (index, actor)
                self.pool.load[actor] += 1

    def _collect(self, ref: Any) -> None:
        index, actor = self.running.pop(ref)
        if actor in self.pool.load:
            self.pool.load[actor] -= 1
        try:
            result = self.ray.get(ref)
        except self.lost as exc:
            if isinstance(exc, self.ray.exceptions.RayActorError) and self.pool.drop(actor):
                self.run.lost_actors += 1
            self.attempts[index] += 1
            if self.attempts[index] >= ATTEMPTS:
                lo, hi = self.ranges[index]
                raise EngineError(
                    f"chunk {lo}-{hi} was lost {self.attempts[index]} times with its Ray actor or node "
                    f"({type(exc).__name__}); the chunks already written are kept, run again to resume"
                ) from None
            self.run.retried += 1
            heapq.heappush(self.todo, index)
            return
        self.used.add(actor)
        self.done[index] = result

    def _note(self, result: dict[str, Any]) -> None:
        run = self.run
        run.chunk_nodes.append(result["node"])
        run.compute_s += result["seconds"]
        run.setup_s = max(run.setup_s, result["setup"])
        run.rows += result["consumed"]
        run.actors = len(self.used)
        run.wall_s = time.perf_counter() - self.began
        if self.new and run.pool_start_s is None:  # some actor is not up yet: the time so far
            run.pool_start_s = round(time.perf_counter() - self.pool.created, 3)


class _Pool:
    """The actors of one engine: created at once, used once they answer, dropped when lost."""

    def __init__(self, ray: Any, size: int, threads: int) -> None:
        self.ray, self.threads, self.session = ray, threads, _session(ray)
        self.created = time.perf_counter()
        self.actors: list[Any] = []
        self.ready: list[Any] = []  # actors that answered ready(), in order
        self.load: dict[Any, int] = {}  # chunks each ready actor holds
        self.pending: dict[Any, Any] = {}  # ready() ObjectRef -> actor, until it answers
        self.start_s: float | None = None
        self.start_deadline = time.monotonic() + START_TIMEOUT_S
        self.busy = False
        for _ in range(size):
            self._add()
        _POOLS.add(self)

    def _add(self) -> Any:
        remote = self.ray.remote(_ChunkWorker)
        # SPREAD: a job uses every node, not the first one the scheduler fills.
        actor = remote.options(num_cpus=self.threads, max_restarts=0, max_task_retries=0,
                               scheduling_strategy="SPREAD").remote(self.threads)
        self.actors.append(actor)
        self.pending[actor.ready.remote()] = actor
        return actor

    def answered(self, ref: Any) -> bool:
        """Note an actor's answer to ready(); True when it was the last one (`start_s` is then set)."""
        actor = self.pending.pop(ref)
        try:
            self.ray.get(ref)
        except _lost_errors(self.ray):  # it died starting (its node went, or its imports failed)
            self.drop(actor)
        else:
            self.ready.append(actor)
            self.load[actor] = 0
        if self.pending or self.start_s is not None:
            return False
        self.start_s = round(time.perf_counter() - self.created, 3)
        return True

    def grow(self) -> None:
        """New actors where the cluster has room, after every one was lost."""
        self.start_deadline = time.monotonic() + START_TIMEOUT_S
        for _ in range(max(1, int(self.ray.available_resources().get("CPU", 0)) // self.threads)):
            self._add()

    def not_started(self) -> EngineError:
        needed = len(self.pending) * self.threads
        free = self.ray.available_resources().get("CPU", 0)
        return EngineError(
            f"no Ray actor started within {START_TIMEOUT_S:.0f} s: the pool needs {needed} CPUs and the cluster "
            f"has {free:g} free (other jobs?); wait for them, give fewer actors (`--actors`), or use --engine local"
        )

    def drop(self, actor: Any) -> bool:
        """Forget an actor that was lost; True the first time."""
        if actor not in self.actors:
            return False
        self.actors.remove(actor)
        if actor in self.ready:
            self.ready.remove(actor)
        self.load.pop(actor, None)
        for ref in [r for r, a in self.pending.items() if a is actor]:
            del self.pending[ref]
        return True

    def close(self) -> None:
        """Kill the actors and wait until Ray has them down and their CPUs back (10 s at most)."""
        _POOLS.discard(self)
        actors, placed = self.actors, list(self.ready)
        self.actors, self.ready, self.load, self.pending = [], [], {}, {}
        if not actors or not self.ray.is_initialized() or _session(self.ray) != self.session:
            return  # Ray was shut down: the actors went with it
        free = self.ray.available_resources().get("CPU", 0.0)
        for actor in actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        deadline = time.monotonic() + 10
        for actor in placed:  # a killed actor answers with RayActorError
            with contextlib.suppress(Exception):
                self.ray.get(actor.ready.remote(), timeout=max(0.1, deadline - time.monotonic()))
        # The raylet returns their CPUs a moment after the processes end.
        while (self.ray.available_resources().get("CPU", 0.0) < free + len(placed) * self.threads
               and time.monotonic() < deadline):
            time.sleep(0.05)


@dataclass(frozen=True)
class _Work:
    """One call's work as each actor gets it: object-store references, fetched once per actor."""

    token: str  # new for each call: an actor binds the source and extractor once per token
    key: str  # the extractor's identity (sha256 of its pickle): the sessions an actor keeps
    source: Any
    extractor: Any  # the pickled extractor
    model: Any  # the cut model's bytes, or None


def _session(ray: Any) -> str:
    """This process's Ray connection: a pool belongs to one (after ray.shutdown its actors are gone)."""
    return ray.get_runtime_context().get_job_id()


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """What Ray raises when an actor, its node or a result stored on that node is gone."""
    exceptions = ray.exceptions
    return tuple(getattr(exceptions, name) for name in (
        "RayActorError", "ObjectLostError", "NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError")
        if hasattr(exceptions, name))


def _ranges(source: Any, start: int, chunk_size: int) -> list[tuple[int, int]]:
    """Chunk boundaries from `start`, as the source sets them (Parquet: within row groups)."""
    if source.length is None:
        raise InputError(
            "engine='ray' needs data whose rows can be read anywhere: an array, a .npy file, an image "
            "folder or Parquet; an iterable of batches runs in this process (engine='local')"
        )
    return source.ranges(start, chunk_size)


def _pickled(extractor: Any) -> bytes:
    """The extractor as the actors get it; fails before starting Ray when it cannot be copied there."""
    try:
        import cloudpickle
    except ImportError:  # Ray vendors its own copy
        from ray import cloudpickle
    try:
        return cloudpickle.dumps(extractor)
    except Exception as exc:
        raise InputError(
            f"the extractor ({type(extractor).__name__}) cannot be sent to Ray workers ({type(exc).__name__}: "
            f"{exc}); use one from zoo.load_extractor, make it picklable (open sessions lazily), or "
            "use engine='local'"
        ) from None


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Keep Ray's own notices (token auth, object store, deprecations) out of the user's terminal.

    Ray logs them through the "ray" logger and the warnings module while it starts; zoo says what
    matters itself (`RayRun.summary`).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _connect(address: str | None) -> tuple[Any, float]:
    """The Ray this process already uses, or one started / joined at `address`; and the seconds it took."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return ray, 0.0
    _check_reachable(address or os.environ.get("RAY_ADDRESS"))
    began = time.perf_counter()
    try:
        from zoo.logs import ray_options

        with _quiet_ray():
            ray.init(address=address, include_dashboard=False, **ray_options())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        raise EngineError(
            f"cannot start or join Ray at {where} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "check the address (`ray status` on the head node), or leave --address out for a local instance"
        ) from None
    return ray, time.perf_counter() - began


def _reported(exc: ZooError) -> str:
    """A worker's zoo error as text for its result: its type, message and fields (JSON values)."""
    fields = {k: v for k, v in exc.fields.items() if _plain(v)}
    return json.dumps({"type": type(exc).__name__, "message": str(exc), "fields": fields})


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _error(text: str) -> ZooError:
    """The zoo error a worker reported in its result, raised again here, fields and all."""
    from zoo import errors

    reported = json.loads(text)
    kind = getattr(errors, reported["type"], None)
    if not (isinstance(kind, type) and issubclass(kind, ZooError)):
        return EngineError(reported["message"])
    try:
        return kind(reported["message"], **reported.get("fields", {}))
    except TypeError:  # fields this zoo's class does not take
        return kind(reported["message"])


def _check_reachable(address: str | None) -> None:
    """Fail fast on a host:port nobody listens on: ray.init retries such an address for minutes."""
    import socket

    if not address:
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():  # "auto", "local": Ray finds the cluster itself
        return
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10):
            pass
    except OSError as exc:
        raise EngineError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head`, check the address (`ray status` on the head node), or leave --address "
            "out for a local instance"
        ) from None


def _unwrapped(exc: BaseException) -> BaseException:
    """An EngineError naming what failed in Ray: the worker's own exception when Ray passes it on."""
    if isinstance(exc, ZooError) and type(exc).__module__.startswith("zoo"):
        return exc
    cause = getattr(exc, "cause", None)  # RayTaskError keeps the worker's exception here
    inner = cause if isinstance(cause, BaseException) else exc
    lines = str(inner).strip().splitlines()
    return EngineError(
        f"the Ray job failed ({type(inner).__name__}: {lines[0] if lines else ''}); the chunks already "
        "written are kept, run again to resume"
    )


def _resolved(value: Any) -> Any:
    """A value of `_Work` as itself: fetched from Ray's object store when it is a reference there."""
    if type(value).__name__ == "ObjectRef":
        import ray

        return ray.get(value)
    return value


class _ChunkWorker:
    """One Ray actor: binds each call's source and extractor once, keeps the last extractors' sessions."""

    # A zoo error (bad input, unreadable image with on_error="raise", data missing on this node)
    # travels back in the result rather than as an exception: Ray wraps exceptions differently
    # from version to version.

    def __init__(self, threads: int) -> None:
        began = time.perf_counter()
        self.threads = threads
        self.node = _node_id()
        self.extractors: OrderedDict[str, Any] = OrderedDict()  # key -> extractor, most recent last
        self.token, self.source, self.extractor, self.error = "", None, None, ""
        with contextlib.suppress(ImportError):  # part of starting: the first chunk does not pay it
            import onnxruntime  # noqa: F401
        self.started_s = time.perf_counter() - began

    def ready(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid(), "seconds": self.started_s}

    def run(self, work: _Work, lo: int, hi: int) -> dict[str, Any]:
        """The chunk [lo, hi) of the call `work` describes, as a result dict (error text on failure)."""
        setup = 0.0
        if work.token != self.token:
            began = time.perf_counter()
            self._bind(work)
            setup = time.perf_counter() - began
        result = {"first": lo, "consumed": 0, "features": None, "skipped": [], "error": self.error,
                  "node": self.node, "pid": os.getpid(), "seconds": 0.0, "setup": setup}
        if self.error:
            return result
        began = time.perf_counter()
        try:
            chunks = self.source.chunks(lo, hi - lo)
            try:
                first, inputs, skipped = next(chunks)
            finally:
                chunks.close()
            rows = self.source.rows(inputs)  # a dict of named inputs counts its samples, not its keys
            result.update(first=first, consumed=rows + len(skipped), skipped=skipped,
                          features=run_extractor(self.extractor, inputs, rows) if rows else None)
        except ZooError as exc:
            result["error"] = _reported(exc)
        result["seconds"] = time.perf_counter() - began
        return result

    def _bind(self, work: _Work) -> None:
        """This call's source (its files checked on this node) and extractor (kept from an earlier call)."""
        self.token, self.error, self.source, self.extractor = work.token, "", None, None
        try:
            source = _resolved(work.source)
            for path in source.paths():
                if not path.exists():
                    raise InputError(
                        f"cannot read {path} on Ray node {_node_address()} (node id {self.node[:12]}): the Ray "
                        "engine reads data where its actors run; put it on storage every node mounts at the "
                        "same path, or use --engine local"
                    )
            extractor = self.extractors.pop(work.key, None)
            if extractor is None:
                import pickle

                extractor = _local_extractor(pickle.loads(_resolved(work.extractor)), work.model, self.threads)
            self.extractors[work.key] = extractor
            while len(self.extractors) > KEPT_EXTRACTORS:
                self.extractors.popitem(last=False)
            self.source, self.extractor = source, extractor
        except ZooError as exc:
            self.error = _reported(exc)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


def _local_extractor(extractor: Any, model: Any, threads: int) -> Any:
    """This actor's extractor with its session open: explicit onnxruntime threads, the model from the
    object store when this node does not have the cut file."""
    from zoo.extract import Extractor

    if not isinstance(extractor, Extractor):
        return extractor
    extractor.threads = threads  # the copy unpickled in this actor, not the caller's
    if extractor.model_path.is_file() or model is None:
        extractor.open_session()
    else:  # a node without the cut file: the model comes as bytes
        extractor.open_session(_resolved(model))
    return extractor


# The engine ``engine="ray"`` names (`RayEngine.named`), created on first use.
_SHARED: RayEngine | None = None
_SHARED_LOCK = threading.Lock()
# The pools this process has open: a new pool closes the idle ones when the cluster lacks CPUs.
_POOLS: weakref.WeakSet[_Pool] = weakref.WeakSet()

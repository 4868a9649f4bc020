"""Run per-case work on this machine or on a cluster: one case is one task.

`amyloidkd preprocess`, `amyloidkd predict` and the preparation step of the training
commands hand their cases to :func:`map_cases`. Where the cases run is the ``scheduler``:

- ``local`` with ``jobs=1``: in this process, one after the other (Dask is not imported);
- ``local`` with ``jobs=N``: a Dask ``LocalCluster`` of N worker processes, one task at a time each;
- ``tcp://host:port``: an existing Dask scheduler (its workers must import AmyloidKDLib);
- ``slurm`` / ``pbs`` / ``sge`` / ``lsf``: dask-jobqueue submits ``jobs`` batch jobs described by a
  cluster config file (queue, cores, memory, walltime, job-script prologue, ...).

Every task first pins its thread pools (ITK, torch, OpenMP/BLAS) to ``threads``, so N tasks on
N cores do not oversubscribe them. A task whose worker dies is rescheduled by Dask and retried
``retries`` more times; a case that still fails comes back as an error string, never as a
half-written output (all writers are atomic, and the preparation cache is write-once).
Dask (the ``[cluster]`` extra) is only imported when a cluster is used; see docs/cluster.md.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from AmyloidKDLib.atomic import is_disk_full
from AmyloidKDLib.errors import ConfigError, DependencyError

#: Batch systems reached through dask-jobqueue, and their cluster classes.
JOBQUEUE_CLUSTERS = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster",
                     "lsf": "LSFCluster"}
SCHEDULERS = ("local", *JOBQUEUE_CLUSTERS)
#: Keys a cluster config may hold besides dask-jobqueue's own keyword arguments.
OWN_KEYS = ("jobs", "memory_limit")
#: dask-jobqueue keyword arguments accepted in a cluster config (the common ones of every batch system).
JOBQUEUE_KEYS = ("queue", "account", "project", "cores", "processes", "memory", "walltime",
                 "job_script_prologue", "job_extra_directives", "job_directives_skip",
                 "worker_extra_args", "local_directory", "log_directory", "interface", "python",
                 "shebang", "death_timeout", "resource_spec", "job_name", "job_mem", "job_cpu",
                 "scheduler_options", "nanny")
#: Environment variables that size thread pools; set in every task (and every local worker).
THREAD_ENV = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OPENBLAS_NUM_THREADS")
#: Worker resource that limits a batch-job worker to one case at a time.
CASE_RESOURCE = "amyloidkd_case"
HELP = ("where cases run: local (worker processes on this machine, --jobs of them), "
        "tcp://HOST:PORT (a running Dask scheduler), or slurm, pbs, sge, lsf (batch jobs "
        "through dask-jobqueue, described by --cluster-config); see docs/cluster.md")


def add_arguments(parser, *, jobs_help: str, threads_help: str) -> None:
    """The per-case execution options every batch command shares: ``--jobs``, ``--threads``,
    ``--scheduler`` and ``--cluster-config`` (``parser`` is an ``argparse`` (sub)parser)."""
    parser.add_argument("--jobs", type=int, default=1, help=jobs_help)
    parser.add_argument("--threads", type=int, default=1, help=threads_help)
    parser.add_argument("--scheduler", default="local", help=HELP)
    parser.add_argument("--cluster-config", metavar="FILE",
                        help="YAML/JSON settings of the batch jobs for --scheduler slurm/pbs/sge/lsf "
                             "(queue, cores, memory, walltime, jobs, job_script_prologue, ...)")


def check_scheduler(scheduler: str) -> str:
    """Return ``scheduler`` if it is one this module can use.

    Raises:
        ConfigError: an unknown name (one line listing the choices).
    """
    if scheduler in SCHEDULERS or (scheduler.startswith("tcp://") and len(scheduler) > 6):
        return scheduler
    raise ConfigError(f"unknown scheduler {scheduler!r}; use local, tcp://HOST:PORT, "
                      f"{', '.join(JOBQUEUE_CLUSTERS)}")


def read_cluster_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The settings of a ``--cluster-config`` file (YAML or JSON mapping); ``{}`` for None.

    Raises:
        ConfigError: unreadable file, not a mapping, or a key that is not a cluster setting.
    """
    if path is None or path == "":
        return {}
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the cluster config ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            values = json.loads(text)
        else:
            import yaml

            values = yaml.safe_load(text)
    except Exception as exc:  # yaml.YAMLError / json.JSONDecodeError: say where, in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML/JSON ({first})") from None
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: a cluster config must be a mapping of settings, "
                          f"got {type(values).__name__}")
    unknown = sorted(set(values) - set(OWN_KEYS) - set(JOBQUEUE_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown cluster setting(s) {', '.join(map(str, unknown))}; "
                          f"known: {', '.join(OWN_KEYS + JOBQUEUE_KEYS)}")
    jobs = values.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"{path}: jobs must be a whole number >= 1, got {jobs!r}")
    return dict(values)


def pin_threads(threads: int) -> None:
    """Size this process's thread pools to ``threads`` (ITK, torch, OpenMP/BLAS).

    ITK reads its setting at its first use in a process, so this must run before the first
    registration of a worker; :func:`map_cases` calls it at the start of every task.
    """
    from AmyloidKDLib.registration import set_registration_threads

    for name in THREAD_ENV:
        os.environ[name] = str(threads)
    set_registration_threads(threads)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _pinned_call(function: Callable[[Any], Any], threads: int | None, item: Any) -> Any:
    """One task: pin the thread pools (unless ``threads`` is None), then run ``function(item)``."""
    if threads is not None:
        pin_threads(threads)
    return function(item)


def _import_dask(scheduler: str):
    # Dask's INFO chatter (scheduler, nanny and worker start-up) would bury the progress bar;
    # the environment variable reaches the worker processes too. A user's own setting wins.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        import distributed
    except ImportError:
        raise DependencyError(f"--scheduler {scheduler} with more than one job needs Dask; install "
                              "the cluster extra: pip install 'amyloidkd[cluster]'") from None
    return distributed


def jobqueue_cluster(scheduler: str, settings: Mapping[str, Any], threads: int = 1):
    """A dask-jobqueue cluster (not yet scaled) for ``scheduler`` from cluster-config ``settings``.

    Each worker process gets ``threads`` cores and runs one case at a time (the worker resource
    :data:`CASE_RESOURCE`); ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` and OpenMP are set in the
    job script, before any worker starts.

    Raises:
        ConfigError: missing ``cores``/``memory``, or settings the batch system rejects.
        DependencyError: dask-jobqueue is not installed.
    """
    try:
        import dask_jobqueue
    except ImportError:
        raise DependencyError(f"--scheduler {scheduler} needs dask-jobqueue; install the cluster "
                              "extra: pip install 'amyloidkd[cluster]'") from None
    kwargs = {k: v for k, v in settings.items() if k not in OWN_KEYS}
    missing = [key for key in ("cores", "memory") if key not in kwargs]
    if missing:
        raise ConfigError(f"--scheduler {scheduler} needs {' and '.join(missing)} in --cluster-config "
                          "(cores and memory of one batch job); see docs/cluster.md")
    cores = int(kwargs["cores"])
    kwargs.setdefault("processes", max(1, cores // threads))
    exports = [f"export {name}={threads}" for name in THREAD_ENV]
    kwargs["job_script_prologue"] = list(kwargs.get("job_script_prologue") or []) + exports
    kwargs["worker_extra_args"] = (list(kwargs.get("worker_extra_args") or [])
                                   + ["--resources", f"{CASE_RESOURCE}=1"])
    kwargs.setdefault("scheduler_options", {"dashboard_address": ":0"})  # no fixed port to clash
    try:
        return getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[scheduler])(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--cluster-config for {scheduler}: {exc}") from None


def _open_client(scheduler: str, jobs: int, threads: int, settings: Mapping[str, Any]):
    """(client, cluster or None, resources for each task or None)."""
    distributed = _import_dask(scheduler)
    if scheduler.startswith("tcp://"):
        try:
            return distributed.Client(scheduler, timeout="30s"), None, None
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
    if scheduler == "local":
        for name in THREAD_ENV:  # inherited by the worker processes before ITK starts there
            os.environ[name] = str(threads)
        cluster = distributed.LocalCluster(
            n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
            memory_limit=settings.get("memory_limit", "auto"),
            # no dashboard; its HTTP server (health checks) on a free port, not 8787, which
            # another cluster may hold ("Port 8787 is already in use" warning)
            scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"})
        return distributed.Client(cluster), cluster, None
    cluster = jobqueue_cluster(scheduler, settings, threads)
    cluster.scale(jobs=int(settings.get("jobs", 1)))
    return distributed.Client(cluster), cluster, {CASE_RESOURCE: 1}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def map_cases(function: Callable[[Any], Any], items: Sequence[Any], *, scheduler: str = "local",
              jobs: int = 1, threads: int | None = 1, cluster_config: str | os.PathLike | None = None,
              retries: int = 2, progress: bool = True, desc: str = "cases",
              on_client: Callable[[Any], None] | None = None
              ) -> Iterator[tuple[int, Any, str | None]]:
    """Run ``function(item)`` for every item, yielding ``(index, result, error)`` as cases finish.

    ``error`` is None when the task returned, else one line (the task raised, or its worker was
    lost more than ``retries`` times); ``result`` is then None. ``function`` must be importable by
    the workers (a module-level function) and should record its own per-case errors in its result.
    A full disk is raised, not yielded: every later case would fail the same way.
    ``on_client`` (tests, tools) is called with the Dask client once the cluster is up.
    ``threads`` None leaves this process's thread pools as they are when the cases run here
    (workers then get one thread each).

    Raises:
        ConfigError: bad ``scheduler``, ``jobs``, ``threads`` or cluster config.
        DependencyError: Dask (or dask-jobqueue) missing for a scheduler that needs it.
    """
    from AmyloidKDLib.progress import progress_bar

    check_scheduler(scheduler)
    if jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    settings = read_cluster_config(cluster_config)
    if not items:  # nothing left to do (e.g. a re-run): no cluster to start
        return
    bar = progress_bar(total=len(items), desc=desc, unit="case", enabled=progress)
    try:
        if scheduler == "local" and jobs == 1:
            for index, item in enumerate(items):
                try:
                    result = _pinned_call(function, threads, item)
                except Exception as exc:  # recorded as the case's error, like a worker's
                    if is_disk_full(exc):
                        raise
                    yield index, None, _one_line(exc)
                else:
                    yield index, result, None
                bar.update()
            return
        yield from _map_on_dask(function, items, scheduler, jobs, threads or 1, settings, retries,
                                bar, on_client)
    finally:
        bar.close()


def _map_on_dask(function, items, scheduler, jobs, threads, settings, retries, bar, on_client):
    distributed = _import_dask(scheduler)
    client, cluster, resources = _open_client(scheduler, jobs, threads, settings)
    try:
        if on_client is not None:
            on_client(client)
        batch = uuid.uuid4().hex[:12]  # task names unique on a scheduler shared by several runs
        futures = [client.submit(_pinned_call, function, threads, item, key=f"case-{index}-{batch}",
                                 retries=retries, pure=False, resources=resources)
                   for index, item in enumerate(items)]
        index_of = {future.key: index for index, future in enumerate(futures)}
        for future in distributed.as_completed(futures):
            index = index_of[future.key]
            if future.status == "finished":
                result, error = future.result(), None
            else:
                try:
                    exc = future.exception()
                except Exception as cancelled:  # e.g. CancelledError: the scheduler dropped it
                    exc = cancelled
                if is_disk_full(exc):
                    raise exc
                result, error = None, _one_line(exc)
            future.release()
            bar.update()
            yield index, result, error
    finally:
        client.close()
        if cluster is not None:
            # Workers whose ITK/torch threads outlive a few seconds of closing are killed by
            # their nanny; the cases are done by then, so that warning is noise here.
            nanny_log = logging.getLogger("distributed.nanny")
            level = nanny_log.level
            nanny_log.setLevel(logging.ERROR)
            try:
                cluster.close()
            finally:
                nanny_log.setLevel(level)

"""One executor interface for independent tasks: local worker processes, or a Dask distributed cluster.

Both run a module-level function on plain-dict tasks and yield ``(task, result)`` pairs as tasks
complete, so the caller records each result at once:

* :class:`InlineExecutor`: one task after another in this process;
* :class:`LocalExecutor`: :class:`concurrent.futures.ProcessPoolExecutor` with ``N`` worker
  processes started by ``spawn`` (or ``forkserver``): fresh interpreters, no state inherited from
  the client (no forked Numba thread pool);
* :class:`DaskExecutor`: a ``distributed.Client`` connected to a scheduler (``tcp://HOST:PORT``)
  or given one; ``distributed`` is an optional dependency (``pip install 'tuckerref[dask]'``),
  imported only here, with a clear error when it is missing.

A task that raises stops the run: the tasks not yet started are cancelled and the error is raised
again naming the task, after every result that completed before it has been yielded.
"""
from __future__ import annotations

import multiprocessing
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

CONTEXTS = ("spawn", "forkserver")


class TaskError(ValueError):
    """A task failed on its worker; the message names the task."""


class InlineExecutor:
    """Tasks one after another in this process (``--workers 0``; also what tests use for speed)."""

    def describe(self):
        return "this process"

    def map_unordered(self, fn, tasks):
        for task in tasks:
            try:
                result = fn(task)
            except Exception as exc:
                raise TaskError(f"task {_describe(task)} failed: {type(exc).__name__}: {exc}") from exc
            yield task, result

    def close(self):
        pass


def _describe(task):
    return task.get("label", "?") + (f" (fold {task['fold']})" if task.get("n_folds", 1) > 1 else "") \
        if isinstance(task, dict) else repr(task)


class LocalExecutor:
    """``workers`` local processes (``context``: 'spawn' or 'forkserver')."""

    def __init__(self, workers=1, context="spawn"):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"--workers must be an integer >= 1, got {workers!r}")
        if context not in CONTEXTS:
            raise ValueError(f"process start method must be one of {CONTEXTS}, got {context!r}")
        self.workers, self.context = workers, context

    def describe(self):
        return f"{self.workers} local worker process{'es' if self.workers > 1 else ''} ({self.context})"

    def map_unordered(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        ctx = multiprocessing.get_context(self.context)
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx) as pool:
            pending = {pool.submit(fn, task): task for task in tasks}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = pending.pop(future)
                        exc = future.exception()
                        if exc is not None:
                            raise TaskError(f"task {_describe(task)} failed: {type(exc).__name__}: {exc}") from exc
                        yield task, future.result()
            finally:
                for future in pending:
                    future.cancel()

    def close(self):
        pass


def _import_distributed():
    try:
        import distributed
    except ImportError:
        raise ValueError("--scheduler needs Dask's distributed package: pip install 'tuckerref[dask]' "
                         "(or pip install 'distributed>=2024.1')") from None
    return distributed


class DaskExecutor:
    """Tasks on a Dask distributed cluster: ``address`` ``tcp://HOST:PORT`` of its scheduler, or a ``client``."""

    def __init__(self, address=None, client=None, timeout=30):
        distributed = _import_distributed()
        if client is None:
            if not address or "://" not in str(address):
                raise ValueError(f"--scheduler must be an address like tcp://HOST:PORT, got {address!r}")
            try:
                client = distributed.Client(address, timeout=timeout)
            except (OSError, TimeoutError) as exc:
                raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
            self._own = True
        else:
            self._own = False
        self.client, self._distributed = client, distributed

    def describe(self):
        workers = self.client.scheduler_info().get("workers", {})
        return f"Dask scheduler {self.client.scheduler.address} with {len(workers)} workers"

    def map_unordered(self, fn, tasks):
        tasks = list(tasks)
        if not tasks:
            return
        run = uuid.uuid4().hex[:12]
        futures = {self.client.submit(fn, task, pure=False, key=f"tuckerref-task-{run}-{i}"): task
                   for i, task in enumerate(tasks)}
        try:
            for future in self._distributed.as_completed(list(futures)):
                task = futures.pop(future)
                if future.status == "error":
                    exc = future.exception()
                    raise TaskError(f"task {_describe(task)} failed: {type(exc).__name__}: {exc}") from exc
                yield task, future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self):
        if self._own:
            self.client.close()


def make_executor(workers=1, scheduler=None, context="spawn"):
    """:class:`DaskExecutor` when ``scheduler`` is given, :class:`InlineExecutor` for 0 workers, else
    :class:`LocalExecutor`."""
    if scheduler:
        return DaskExecutor(scheduler)
    if workers == 0:
        return InlineExecutor()
    return LocalExecutor(workers, context)


__all__ = ["InlineExecutor", "LocalExecutor", "DaskExecutor", "make_executor", "TaskError", "CONTEXTS"]

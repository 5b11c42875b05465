"""MultiProc for ``inrreg-bids`` whose workers stop cleanly on SIGTERM, and leave no orphan.

Nipype's MultiProc workers (``concurrent.futures`` processes started from a fork server) keep
SIGTERM's default action, and nothing stops them when the main process goes: a ``kill`` of
``inrreg-bids`` (``docker stop``, a scheduler at a time limit) left the workers running their
nodes under init, and a worker killed by the signal in the middle of a node left that node's
half-written files and its own child (the ANTs child process) behind. Here:

* each worker installs :func:`_on_sigterm` when it starts. During a node it raises
  :class:`Terminated` once, so that the node's own cleanup runs (staging folders, the ANTs child,
  temporary derivative files); Nipype records the node as failed, not finished, so a rerun runs it
  again, and its ``_0x<hash>_unfinished.json`` marker is removed whichever step of Nipype's the signal
  landed in (:func:`_remove_unfinished_hashfile`). Between nodes it only records the signal. A
  terminated worker starts no other node (:func:`run_in_worker`) and ends when the pool shuts down;
* the fork server the workers come from is started with SIGTERM blocked (:func:`_start_fork_server`):
  a SIGTERM to every process of a job (a scheduler's) would otherwise end it first, and the main
  process would then lose track of the workers, which stay blocked on their task queue forever;
* the main process forwards its SIGTERM to the workers (:func:`signal_workers`), also when the
  signal came to it alone, and :meth:`MultiProcPlugin.stop_workers` (called by
  :func:`.execution.execute` when the run stops on SIGTERM or Ctrl-C) cancels the nodes not
  started, waits for the workers to end and kills the ones still there after the grace period.

The class keeps Nipype's name, ``MultiProcPlugin``: Nipype names the plugin of a workflow run
with an instance by its class name without ``Plugin`` (``MultiProc``).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import forkserver
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from nipype.pipeline.plugins import multiproc

#: seconds :meth:`MultiProcPlugin.stop_workers` waits for the workers' nodes to clean up
STOP_GRACE_S = 20.0


class Terminated(BaseException):
    """SIGTERM, raised in the main process of ``inrreg-bids`` and in a worker during a node, so that
    ``finally`` blocks and the nodes' cleanup run as for Ctrl-C (a ``BaseException``: no
    ``except Exception`` swallows it)."""


# --- worker side: module state of each worker process (never set in the main process) -------------
#: a node is running in this worker
_BUSY = False
#: this worker received SIGTERM
_TERMINATED = False
#: :class:`Terminated` was raised once already (a second SIGTERM must not interrupt the cleanup)
_RAISED = False


def _init_worker(cwd: str) -> None:
    """Pool initializer: Nipype's (working directory, no network check), then the SIGTERM handler,
    then SIGTERM unblocked (blocked in the fork server; one that came meanwhile is delivered now)."""
    multiproc.process_initializer(cwd)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _on_sigterm(signum: int, frame: Any) -> None:
    """Worker SIGTERM handler: raise :class:`Terminated` once if a node runs, else only remember it."""
    global _TERMINATED, _RAISED
    _TERMINATED = True
    if _BUSY and not _RAISED:
        _RAISED = True
        raise Terminated


def _not_run(args: tuple) -> dict:
    """What Nipype's ``run_node`` returns for a node that failed, for a node this worker did not run
    (``args``: ``run_node``'s, the task id last)."""
    return {"result": None, "traceback": "inrreg-bids: terminated (SIGTERM)", "taskid": args[-1]}


def run_in_worker(function: Callable[..., dict], *args: Any) -> dict:
    """Run one task (Nipype's ``run_node(node, updatehash, taskid)``) in a worker, with SIGTERM
    turned into :class:`Terminated` while it runs; after a SIGTERM, report the node as not run.

    ``run_node`` catches every exception of the node (the node's ``Terminated`` included) and
    returns it as a result; one that comes after it (while this function returns) is caught here,
    so that the future never carries an exception (Nipype's result callback would log a traceback).
    """
    global _BUSY
    if _TERMINATED:
        return _not_run(args)
    try:
        _BUSY = True
        try:
            return function(*args)
        finally:
            _BUSY = False
            if _TERMINATED:
                _remove_unfinished_hashfile(args[0])
    except Terminated:
        return _not_run(args)


def _remove_unfinished_hashfile(node: Any) -> None:
    """Nipype's tear-up after a failed node, which it skips when the node ends by a ``BaseException``.

    ``Node.run`` writes ``_0x<hash>_unfinished.json`` before the interface runs and removes it in an
    ``except Exception``. A SIGTERM inside the interface reaches it as a failed run (the interface's
    runtime context turns :class:`Terminated` into a traceback), but one that lands while Nipype
    itself works around the interface (saving the node's pickles and report) ends ``Node.run`` by
    :class:`Terminated`, past that ``except``: the marker of a node still running stayed in the work
    directory after the app had exited. Removed here (the node's folder only; a node whose run
    finished has none left)."""
    if getattr(node, "base_dir", None) is None:  # output_dir() would make a temporary folder
        return
    try:
        folder = Path(node.output_dir())
    except Exception:  # noqa: BLE001 - no folder, nothing to remove
        return
    for marker in folder.glob("_0x*_unfinished.json"):
        marker.unlink(missing_ok=True)


class _Pool(ProcessPoolExecutor):
    """A process pool whose tasks run through :func:`run_in_worker`."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(run_in_worker, fn, *args, **kwargs)


# --- main side --------------------------------------------------------------------------------------
def _start_fork_server() -> None:
    """Start multiprocessing's fork server (unless it runs already) with SIGTERM blocked: the signal
    mask survives its ``exec``, so it ignores a SIGTERM to the whole job and ends, as always, when
    this process and the workers are gone. Its children, the workers, unblock it (:func:`_init_worker`).
    A SIGTERM to this process meanwhile is held back, not lost: it comes when unblocked."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def signal_workers(signum: int = signal.SIGTERM) -> list[int]:
    """Send ``signum`` to the live multiprocessing children of this process (in ``inrreg-bids``
    these are only MultiProc's workers); return their pids. Safe in a signal handler."""
    sent = []
    for child in mp.active_children():
        if child.pid is None:
            continue
        try:
            os.kill(child.pid, signum)
        except (ProcessLookupError, PermissionError):
            continue
        sent.append(child.pid)
    return sent


@contextmanager
def _quiet_pool_callbacks() -> Iterator[None]:
    """Silence ``concurrent.futures``' logger: cancelling the queued nodes calls Nipype's result
    callback on cancelled futures, which raises, and the executor logs each with a traceback."""
    logger = logging.getLogger("concurrent.futures")
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


class MultiProcPlugin(multiproc.MultiProcPlugin):
    """Nipype's MultiProc with workers that handle SIGTERM (module docstring) and
    :meth:`stop_workers`; same ``plugin_args`` (``mp_context`` included)."""

    def __init__(self, plugin_args: dict | None = None):
        super().__init__(plugin_args=plugin_args)
        # Nipype's pool has started no worker yet (they start with the first node): replace it by
        # one whose workers install the SIGTERM handler first
        self.pool.shutdown(wait=False)
        context = mp.get_context(self.plugin_args.get("mp_context"))
        if context.get_start_method() == "forkserver":
            _start_fork_server()
        self.pool = _Pool(max_workers=self.processors, initializer=_init_worker, initargs=(self._cwd,),
                          mp_context=context)

    def stop_workers(self, grace: float = STOP_GRACE_S) -> list[int]:
        """Stop every worker: SIGTERM (the running nodes clean up and end), no queued node started,
        then SIGKILL for those still running after ``grace`` seconds. Returns the pids killed."""
        killed = []
        with _quiet_pool_callbacks():
            workers = [p for p in mp.active_children() if p.pid is not None]
            signal_workers(signal.SIGTERM)
            self.pool.shutdown(wait=False, cancel_futures=True)
            deadline = time.monotonic() + grace
            for worker in workers:
                worker.join(max(0.0, deadline - time.monotonic()))
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join(5.0)
                    killed.append(worker.pid)
            self.pool.shutdown(wait=True)
        return killed

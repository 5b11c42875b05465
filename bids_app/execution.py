"""Running the graph: Nipype's configuration (logging, crash files, polling), the plugin call, and
Ctrl-C and SIGTERM handling (an interruption is exit 130 and a termination 143, not a failure); a
failed run is one line naming the first crashed node (:func:`.crashes.crash_summary`).

MultiProc runs through :class:`.workers.MultiProcPlugin`: on SIGTERM or Ctrl-C its workers are
stopped before :func:`execute` returns (none is left running its node after the app exits)."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from nipype import config, logging as nlogging

from .crashes import crash_summary
from .parser import EXIT_FAILURE, EXIT_OK
from .workers import MultiProcPlugin, Terminated, signal_workers

#: 128 + SIGINT and 128 + SIGTERM, what a shell reports for a command stopped by either signal
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def execute(top, opts, plugin, work_dir: Path) -> int:
    """Run ``top`` with the run's plugin; ``EXIT_OK``, or ``EXIT_FAILURE`` after one line on stderr
    naming the first crashed node (crash files in ``work_dir/crash``). Ctrl-C raises
    ``KeyboardInterrupt`` (exit 130 in :func:`.run.main`) and SIGTERM :class:`.workers.Terminated`
    (exit 143), even when a node swallowed it; MultiProc's workers are stopped first."""
    crash_dir = work_dir / "crash"
    # MultiProc polls its workers; batch plugins run squeue per pending job at each poll: Nipype's 2 s there
    poll = 2.0 if plugin.batch else 0.5
    # without -v, node errors are summarised in one line (details in the crash files), not logged twice
    level = "INFO" if opts.verbose > 1 else "WARNING" if opts.verbose else "CRITICAL"
    config.update_config({"logging": {"workflow_level": level, "interface_level": level, "utils_level": level,
                                      "log_to_file": False},
                          "execution": {"check_version": False, "crashdump_dir": str(crash_dir),
                                        "crashfile_format": "txt", "remove_unnecessary_outputs": False,
                                        "stop_on_first_crash": bool(opts.stop_on_first_crash),
                                        "poll_sleep_duration": poll,
                                        "resource_monitor": bool(opts.resource_monitor)}})
    nlogging.update_logging(config)
    logging.getLogger("nipype").propagate = False
    top.config["execution"].update({"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                    "remove_unnecessary_outputs": False, "poll_sleep_duration": poll,
                                    "stop_on_first_crash": bool(opts.stop_on_first_crash)})
    if opts.write_graph:
        top.write_graph(graph2use="colored", format="svg", simple_form=True)
    before = set(crash_dir.glob("crash-*")) if crash_dir.exists() else set()
    # Ctrl-C (SIGINT to the process group) and SIGTERM (to the app alone, or to every process of a
    # job): Nipype turns the exception inside a running node into a node crash and goes on with the
    # other nodes, so remember the signal, stop at the next node event (the status callback runs
    # outside Nipype's per-node exception handling) and report an interruption (130) or a
    # termination (143), not a failure. Finished nodes stay cached in the work dir for a rerun.
    interrupted = _INTERRUPTED
    interrupted.clear()
    plugin_args = dict(plugin.plugin_args)
    if not plugin.graph:  # graph plugins submit everything at once and take no callback
        plugin_args["status_callback"] = StopWhenInterrupted(plugin.plugin_args.get("status_callback"))
    # MultiProc as an instance: its workers handle SIGTERM, and it can stop them (workers.py)
    runner = MultiProcPlugin(plugin_args=plugin_args) if plugin.plugin == "MultiProc" else plugin.plugin
    previous_handlers = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            previous_handlers[signum] = signal.signal(signum, _on_signal)
        except ValueError:  # not the main thread
            break
    try:
        top.run(plugin=runner, plugin_args=plugin_args)
    except Exception as err:  # nipype: RuntimeError "Workflow did not execute cleanly"; plugin errors
        if interrupted:
            _stop(runner)
            raise _stop_exception() from None
        crashes = sorted(set(crash_dir.glob("crash-*")) - before) if crash_dir.exists() else []
        detail = crash_summary(crashes[0]) if crashes else str(err).splitlines()[0]
        print(f"inrreg-bids: error: processing failed ({len(crashes)} crashed node(s); {detail}); crash files in "
              f"'{crash_dir}'", file=sys.stderr)
        return EXIT_FAILURE
    except BaseException:  # KeyboardInterrupt, Terminated: no worker may outlive the run
        _stop(runner)
        raise
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    if interrupted:  # a node swallowed the signal and the run still ended without an error
        raise _stop_exception()
    return EXIT_OK


#: SIGINTs and SIGTERMs received during :func:`execute` (module level: the status callback must
#: pickle, since Nipype pickles the plugin settings into the graphs it runs for MapNodes)
_INTERRUPTED: list[int] = []


def _on_signal(signum, frame) -> None:
    """SIGINT and SIGTERM during :func:`execute`: remember it, pass SIGTERM on to MultiProc's workers
    (a ``kill`` reaches the app alone), raise ``KeyboardInterrupt`` or :class:`.workers.Terminated`.

    Only the first signal raises: a second one (a scheduler's repeated SIGTERM, Ctrl-C pressed
    twice) must not cut short the stopping of the workers; a first one that a node in this process
    swallowed is raised again by :class:`StopWhenInterrupted` at the next node event."""
    _INTERRUPTED.append(signum)
    if signum == signal.SIGTERM:
        signal_workers(signal.SIGTERM)
    if len(_INTERRUPTED) == 1:
        raise _stop_exception()


def _stop_exception() -> BaseException:
    """The exception for the signals received: :class:`.workers.Terminated` once a SIGTERM came,
    else ``KeyboardInterrupt``."""
    return Terminated() if signal.SIGTERM in _INTERRUPTED else KeyboardInterrupt()


def _stop(runner) -> None:
    """Stop MultiProc's workers (a plugin given by name has none of its own to stop)."""
    if isinstance(runner, MultiProcPlugin):
        runner.stop_workers()


class StopWhenInterrupted:
    """Nipype status callback: raises ``KeyboardInterrupt`` (or :class:`.workers.Terminated` after a
    SIGTERM) at the next node event once a signal came (outside Nipype's per-node exception
    handling, so the run stops), then calls ``previous``."""

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, node, status) -> None:
        if _INTERRUPTED:
            raise _stop_exception()
        if self.previous is not None:
            self.previous(node, status)

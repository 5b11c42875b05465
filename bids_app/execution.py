"""Running the graph: Nipype's configuration (logging, crash files, polling), the plugin call, and
Ctrl-C handling (an interruption is exit 130, not a failure); a failed run is one line naming the
first crashed node (:func:`.crashes.crash_summary`)."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

from nipype import config, logging as nlogging

from .crashes import crash_summary
from .parser import EXIT_FAILURE, EXIT_OK


def execute(top, opts, plugin, work_dir: Path) -> int:
    """Run ``top`` with the run's plugin; ``EXIT_OK``, or ``EXIT_FAILURE`` after one line on stderr
    naming the first crashed node (crash files in ``work_dir/crash``). Ctrl-C raises
    ``KeyboardInterrupt`` (exit 130 in :func:`.run.main`), even when a node swallowed it."""
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
    # Ctrl-C (SIGINT to the process group): Nipype turns the KeyboardInterrupt inside a running node
    # into a node crash and goes on with the other nodes, so remember the signal, stop at the next
    # node start (the status callback runs outside Nipype's per-node exception handling) and report
    # an interruption (130), not a failure. Finished nodes stay cached in the work dir for a rerun.
    interrupted = _INTERRUPTED
    interrupted.clear()
    plugin_args = dict(plugin.plugin_args)
    if not plugin.graph:  # graph plugins submit everything at once and take no callback
        plugin_args["status_callback"] = StopWhenInterrupted(plugin.plugin_args.get("status_callback"))
    try:
        previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread
        previous_handler = None
    try:
        top.run(plugin=plugin.plugin, plugin_args=plugin_args)
    except Exception as err:  # nipype: RuntimeError "Workflow did not execute cleanly"; plugin errors
        if interrupted:
            raise KeyboardInterrupt from None
        crashes = sorted(set(crash_dir.glob("crash-*")) - before) if crash_dir.exists() else []
        detail = crash_summary(crashes[0]) if crashes else str(err).splitlines()[0]
        print(f"inrreg-bids: error: processing failed ({len(crashes)} crashed node(s); {detail}); crash files in "
              f"'{crash_dir}'", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    if interrupted:  # a node swallowed the interrupt and the run still ended without an error
        raise KeyboardInterrupt
    return EXIT_OK


#: SIGINTs received during :func:`execute` (module level: the status callback must pickle, since
#: Nipype pickles the plugin settings into the graphs it runs for MapNodes)
_INTERRUPTED: list[int] = []


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


class StopWhenInterrupted:
    """Nipype status callback: raises ``KeyboardInterrupt`` at the next node event once a SIGINT came
    (outside Nipype's per-node exception handling, so the run stops), then calls ``previous``."""

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, node, status) -> None:
        if _INTERRUPTED:
            raise KeyboardInterrupt
        if self.previous is not None:
            self.previous(node, status)

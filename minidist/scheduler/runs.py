"""``client.run`` bookkeeping on the scheduler thread: which workers still owe an answer to which run.

    RunOnWorkers(function, arguments, workers, reply) ─► start() ─► handle.start_run(run_id, ...) each
    RunResult(run_id, ok, value) from a worker         ─► answer()
    the worker dies or is removed                       ─► worker_gone(): it answers with an error
    every worker answered                               ─► reply.set_result({address: (ok, value)})

Everything here runs on the scheduler thread, so it needs no lock.
"""

from __future__ import annotations

import itertools
from typing import Any


class RunBook:
    """The runs in flight of one scheduler."""

    def __init__(self):
        self._runs: dict[int, dict] = {}  # run id -> {"pending", "results", "reply"}
        self._ids = itertools.count(1)

    def start(self, handles: list, function: Any, arguments: Any, reply) -> None:
        """Send the function to each handle; ``reply`` resolves once all of them answered."""
        run_id = next(self._ids)
        self._runs[run_id] = {
            "pending": {h.address for h in handles},
            "results": {},
            "reply": reply,
        }
        for handle in handles:
            try:
                handle.start_run(run_id, function, arguments)
            except OSError as exc:  # its pipe is gone: it answers with the error now
                self.answer(run_id, handle.address, False, (RuntimeError(str(exc)), ""))
        if not handles:
            self._finish(run_id)

    def answer(self, run_id: int, address: str, ok: bool, value) -> None:
        entry = self._runs.get(run_id)
        if entry is None or address not in entry["pending"]:
            return
        entry["pending"].discard(address)
        entry["results"][address] = (ok, value)
        if not entry["pending"]:
            self._finish(run_id)

    def worker_gone(self, address: str, reason: str) -> None:
        for run_id in list(self._runs):
            self.answer(run_id, address, False, (RuntimeError(f"worker died: {reason}"), ""))

    def _finish(self, run_id: int) -> None:
        entry = self._runs.pop(run_id)
        if not entry["reply"].done():
            entry["reply"].set_result(entry["results"])

    def close(self) -> None:
        """The scheduler is closing: nobody will answer the runs in flight."""
        for entry in self._runs.values():
            if not entry["reply"].done():
                entry["reply"].set_exception(
                    RuntimeError("The scheduler closed before the workers answered")
                )
        self._runs.clear()

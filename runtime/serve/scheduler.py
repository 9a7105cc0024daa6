"""Requests from many clients, answered one at a time in arrival order by one worker thread.

The decoder is batch 1 with one KV cache, so requests cannot decode side by side; a first-come,
first-served queue is fair (nobody overtakes, nobody starves) and its bound turns a flood into
prompt refusals (429) instead of unbounded waiting and memory. Each request carries a deadline
to start by (past it, 503), a deadline to finish by (then it is cut short) and a cancel flag,
checked when it leaves the queue and after every token it generates.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from ...errors import Phi4EdgeError, RequestError
from .engine import Engine, Turn

log = logging.getLogger("phi4edge.serve")


@dataclass(frozen=True)
class Failed:
    """A request that ended in an error: the HTTP status and OpenAI error fields."""

    status: int
    message: str
    kind: str = "invalid_request_error"
    code: str | None = None


class Job:
    """One queued request; its events (engine Deltas, Finished, or Failed) arrive on `events`."""

    def __init__(self, turn: Turn, start_by: float, deadline: float):
        self.turn = turn
        self.start_by = start_by            # time.monotonic() by which it must leave the queue
        self.deadline = deadline            # ... and by which its answer ends
        self.cancel = threading.Event()     # the client went away
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()

    def emit(self, event: object) -> None:
        """From the worker thread: hand an event to the request's handler."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:   # the event loop has shut down
            self.cancel.set()

    def should_stop(self) -> str | None:
        if self.cancel.is_set():
            return "disconnect"
        return "time limit" if time.monotonic() > self.deadline else None


class Scheduler:
    """The worker thread and its bounded first-come, first-served queue."""

    def __init__(self, engine: Engine, max_queue: int):
        self.engine = engine
        self.max_queue = max_queue
        self.waiting = 0
        self.running = False
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="phi4edge-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False when `max_queue` jobs are already waiting."""
        with self._lock:
            if self.waiting >= self.max_queue:
                return False
            self.waiting += 1
        self._jobs.put(job)
        return True

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                self.waiting -= 1
                self.running = True
            try:
                self._run(job)
            finally:
                self.running = False

    def _run(self, job: Job) -> None:
        if job.cancel.is_set():   # the client left while it waited
            return
        if time.monotonic() > job.start_by:
            job.emit(Failed(503, "the server was too busy to start this request in time; retry later",
                            "server_error", "timeout"))
            return
        try:
            for event in self.engine.run(job.turn, job.should_stop):
                job.emit(event)
        except RequestError as e:
            job.emit(Failed(400, str(e)))
        except Phi4EdgeError as e:
            job.emit(Failed(500, str(e), "server_error"))
        except Exception as e:   # noqa: BLE001 - the worker must outlive any one request
            log.exception("request failed")
            job.emit(Failed(500, f"internal error ({type(e).__name__})", "server_error"))

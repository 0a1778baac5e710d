"""Run slow work off the GUI thread and hear back on it.

:func:`run_task` runs ``fn`` in a daemon thread and reports through the signals of a :class:`Task`
(a QObject living in the GUI thread, so its signals reach GUI slots as queued calls). ``fn`` may take a
keyword argument ``progress`` (``progress(percent, text)``) and ``cancelled`` (a callable, true once
:meth:`Task.cancel` was called). Tasks are kept alive until they finish.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)

_alive: set[Task] = set()
_alive_lock = threading.Lock()


class Task(QObject):
    done = Signal(object)
    failed = Signal(object)  # the exception
    progress = Signal(int, str)
    finished = Signal()  # after done or failed

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._cancel = threading.Event()
        self.thread: threading.Thread | None = None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.running


def run_task(fn: Callable[..., Any], *args: Any, name: str = "task",
             on_done: Callable[[Any], None] | None = None, on_failed: Callable[[BaseException], None] | None = None,
             on_progress: Callable[[int, str], None] | None = None, **kwargs: Any) -> Task:
    task = Task(name)
    if on_done is not None:
        task.done.connect(on_done)
    if on_failed is not None:
        task.failed.connect(on_failed)
    if on_progress is not None:
        task.progress.connect(on_progress)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "progress" in params:
        kwargs["progress"] = lambda pct, text="": task.progress.emit(int(pct), str(text))
    if "cancelled" in params:
        kwargs["cancelled"] = lambda: task.cancelled

    def body() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the GUI
            log.debug("task %s failed", name, exc_info=True)
            task.failed.emit(exc)
        else:
            task.done.emit(result)
        finally:
            task.finished.emit()

    def forget() -> None:  # on the GUI thread, once every queued signal of the task has been delivered
        with _alive_lock:
            _alive.discard(task)

    task.finished.connect(forget)
    with _alive_lock:
        _alive.add(task)
    task.thread = threading.Thread(target=body, name=f"focalchat-gui-{name}", daemon=True)
    task.thread.start()
    return task


def running_tasks() -> list[Task]:
    with _alive_lock:
        return list(_alive)

"""One progress channel for all of edgetx: stdlib logging, drawn by rich when a console is attached.

Library code reports through three things only:
- `log` (the "edgetx" logger, children by module name): one line per event;
- `stage(title)`: a step with a start and a duration (a spinner while it runs, "✓ title (1.2s)" after);
- `task(description, total)`: a counted loop (a progress bar: candidates timed, gate steps, downloads).

Nothing is printed unless an application attaches a handler. The CLI, the provisioning command and the
benchmark scripts call `show_on(console)`, which installs rich's logging handler on the "edgetx" logger
and draws stages and tasks on that console; an app embedding edgetx can attach its own logging handler
instead and gets the same events as plain log records (stages and tasks are logged at their end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("edgetx")

_console: Any = None  # the rich Console that `show_on` attached, if any


def show_on(console: Any, level: int = logging.INFO) -> None:
    """Draw edgetx's progress on a rich `console`: log lines through rich's handler, stages as spinners,
    tasks as progress bars (on a terminal; elsewhere, e.g. CI logs, one line per finished stage)."""
    from rich.logging import RichHandler

    global _console
    _console = console
    for handler in [h for h in log.handlers if isinstance(h, RichHandler)]:
        log.removeHandler(handler)
    log.addHandler(RichHandler(console=console, show_time=False, show_path=False, show_level=False,
                               markup=False, highlighter=None, rich_tracebacks=False))
    log.setLevel(level)
    log.propagate = False  # the console shows them; do not print them twice through the root logger


def _interactive() -> bool:
    return _console is not None and _console.is_terminal


_live: Any = None  # the one rich Progress display while any stage or task is open (rich allows one at a time)
_open = 0


@contextmanager
def _display() -> Iterator[Any]:
    """The shared live display: started by the outermost stage or task, stopped when the last one ends."""
    global _live, _open
    if _live is None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        _live = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[count]}"),
                         TimeElapsedColumn(), console=_console, transient=True)
        _live.start()
    _open += 1
    try:
        yield _live
    finally:
        _open -= 1
        if _open == 0:
            _live.stop()
            _live = None


@contextmanager
def stage(title: str) -> Iterator[None]:
    """A step of a longer job: a spinner while it runs, then one line with its duration."""
    started = time.perf_counter()
    if _interactive():
        with _display() as live:
            row = live.add_task(f"{title} ...", total=None, count="")
            try:
                yield
            finally:
                live.remove_task(row)
    else:
        log.debug("%s ...", title)
        yield
    log.info("✓ %s (%.1fs)", title, time.perf_counter() - started)


class Task:
    """A counted loop in progress: `advance()` after each item; `note(text)` says what it is doing."""

    def __init__(self, description: str, total: int | None, bar: Any = None, bar_id: Any = None):
        self.description, self.total, self.done = description, total, 0
        self._bar, self._id = bar, bar_id

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._id, advance=count, count=f"{self.done}/{self.total}" if self.total else "")

    def note(self, text: str) -> None:
        """Show what the task is doing now (next to the bar, or as a debug log line)."""
        if self._bar is not None:
            self._bar.update(self._id, description=f"{self.description}: {text}")
        else:
            log.debug("%s: %s", self.description, text)


@contextmanager
def task(description: str, total: int | None = None) -> Iterator[Task]:
    """A progress bar over `total` items (a spinner when the total is unknown), removed when done."""
    if not _interactive():
        yield Task(description, total)
        return
    with _display() as live:
        row = live.add_task(description, total=total, count=f"0/{total}" if total else "")
        try:
            yield Task(description, total, live, row)
        finally:
            live.remove_task(row)

"""A closed output pipe ends our output quietly (``python train.py | head -3``).

The reader of what we print may leave before we are done (``| head``, a ``tee`` that died).
Python then raises ``BrokenPipeError`` on the next write, and again when it flushes the stream
at exit: a traceback, or a search stopped half-way by its own progress bar. Instead, the first
``EPIPE`` points that stream's file descriptor at ``/dev/null``: what is still printed (the bar,
warnings, the summary) is dropped without a word.

* A search goes on to its end: its trials, their logs and the database never depend on the
  terminal (a closed reader is not a request to stop; Ctrl-C is), and it exits with its own
  status (0 when it finished).
* ``hparam-joblib``, whose only product is its output, stops at once with status 141, what the
  shell reports for a command killed by SIGPIPE (``cat big.txt | head``).

Only a pipe or a socket is guarded: a terminal or a file never raises ``EPIPE``, and a notebook's
streams are left alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
from collections.abc import Iterator
from typing import Any, TextIO

#: The exit status of a command whose reader left (128 + SIGPIPE, as the shell shows it).
CLOSED_PIPE_STATUS = 141


def silence(stream: Any) -> None:
    """Point ``stream``'s file descriptor at ``/dev/null`` (later writes and the flush at exit
    are dropped) and drop what it still buffers."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    with contextlib.suppress(OSError, ValueError):
        stream.flush()


class _QuietPipe:
    """``stream`` (a pipe), whose first ``BrokenPipeError`` silences it instead of raising."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            silence(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            silence(self._stream)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _is_pipe(stream: Any) -> bool:
    if not isinstance(stream, io.TextIOWrapper):  # a notebook's or a test's own stream: left alone
        return False
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextlib.contextmanager
def quiet_closed_pipes() -> Iterator[None]:
    """While inside, ``sys.stdout`` and ``sys.stderr`` (when pipes) drop their output once their
    reader is gone instead of raising; restored on the way out."""
    saved = sys.stdout, sys.stderr
    if _is_pipe(sys.stdout):
        sys.stdout = _QuietPipe(sys.stdout)
    if _is_pipe(sys.stderr):
        sys.stderr = _QuietPipe(sys.stderr)
    try:
        yield
    finally:
        if isinstance(sys.stdout, _QuietPipe):
            sys.stdout.flush()
            sys.stdout = saved[0]
        if isinstance(sys.stderr, _QuietPipe):
            sys.stderr.flush()
            sys.stderr = saved[1]

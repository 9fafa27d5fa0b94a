"""Signal handlers installed for a while and put back (the launcher's Ctrl-C / SIGTERM handling)."""

from __future__ import annotations

import signal
import threading
from typing import Any


def install_handlers(handlers: dict[Any, Any]) -> dict[Any, Any]:
    """Install signal handlers (main thread only); returns the previous ones, to install back."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}

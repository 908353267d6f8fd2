"""Sends this package's `logging` records to the host's log (Triton's `pb_utils.Logger`), so
engine, outbox and BLS messages land in the server log with the server's format."""

from __future__ import annotations

import logging
from collections.abc import Callable

_HANDLER_NAME = "moe-engine-host-log"


class _HostHandler(logging.Handler):
    def __init__(
        self, info: Callable[[str], None], warn: Callable[[str], None], error: Callable[[str], None]
    ) -> None:
        super().__init__(logging.INFO)
        self.set_name(_HANDLER_NAME)
        self._info, self._warn, self._error = info, warn, error

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"{record.name}: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                self._error(message)
            elif record.levelno >= logging.WARNING:
                self._warn(message)
            else:
                self._info(message)
        except Exception:
            self.handleError(record)


def forward_to(
    info: Callable[[str], None], warn: Callable[[str], None], error: Callable[[str], None]
) -> None:
    """Route `moe_engine.*` records at INFO and above to these functions (once per process)."""
    root = logging.getLogger("moe_engine")
    if any(h.get_name() == _HANDLER_NAME for h in root.handlers):
        return
    root.addHandler(_HostHandler(info, warn, error))
    root.setLevel(logging.INFO)
    root.propagate = False

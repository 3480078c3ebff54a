"""edgekit's messages: one ``logging`` logger, ``edgekit``, writing plain lines to stderr.

Stages report what they do through :func:`info` (progress bars are tqdm's, also on stderr); the CLI's
``-v`` shows debug lines too, ``-q`` only warnings and errors. A library user configures the
``edgekit`` logger like any other (this module installs its stderr handler only once, at import).
"""

from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("edgekit")


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest and redirections swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it
        pass


if not any(isinstance(h, _Stderr) for h in LOGGER.handlers):
    _handler = _Stderr()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(_handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False


def configure(verbosity: int = 0) -> None:
    """``verbosity`` -1 (``-q``): warnings and errors; 0: progress messages; 1 (``-v``): debug lines too."""
    LOGGER.setLevel(logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO)
    # torch warns about an enum torchao registers (transformers imports torchao when it is installed):
    # two lines of noise on every command that loads a model, nothing a user can act on
    logging.getLogger("torch.utils._pytree").setLevel(logging.DEBUG if verbosity > 0 else logging.ERROR)


def info(message: str) -> None:
    LOGGER.info(message)


def warning(message: str) -> None:
    LOGGER.warning(message)


def debug(message: str) -> None:
    LOGGER.debug(message)

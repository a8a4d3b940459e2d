"""The one exception type that the command line turns into a one-line message and exit status 2.

Library code raises :class:`AdvlabError` (a ``ValueError``) for anything a user can fix: a bad
option, a missing or corrupt file, an unwritable folder. The CLI catches it, prints
``advlab: error: <message>`` and exits with status 2, never with a traceback.
"""

from __future__ import annotations


class AdvlabError(ValueError):
    """A problem with the user's input or files, with a message that says what to do about it."""


class Contradiction(AdvlabError):
    """Two measurements that cannot both be right (a bound proves an example robust that an attack breaks):
    no number may be shown. The CLI prints the message on one line and exits with :attr:`exit_status` 1, as
    a check that fails, not as bad input."""

    exit_status = 1


class Preempted(Exception):
    """Work stopped on SIGTERM after saving its state (advlab.train.preempt); ``--resume`` continues it.
    The CLI prints the message on one line and exits with :attr:`exit_status`."""

    exit_status = 143  # 128 + SIGTERM, what a shell reports for a job SIGTERM ended


def check_range(name: str, value: float, low: float, high: float | None = None) -> float:
    """Return ``value`` if ``low <= value <= high`` (``high=None``: no upper bound), else raise."""
    if value != value or value < low or (high is not None and value > high):  # value != value: NaN
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise AdvlabError(f"{name} must be {bound}, got {value!r}")
    return value

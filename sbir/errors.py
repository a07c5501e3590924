"""The one base class of every error sbir raises on purpose, and the command line's contract with it.

Every project error derives from :class:`SbirError`. The CLI prints its message as one line on stderr
and exits with its ``exit_code`` (1 = the input or the environment is wrong, 2 = the command line or the
configuration is wrong). Anything that is not an ``SbirError`` is a bug and keeps its traceback.
Subclasses that describe a bad value also derive from ``ValueError`` so callers may catch either.
"""

from __future__ import annotations

from collections.abc import Iterator


class SbirError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do.

    The message is kept apart from ``args``, so a framework that annotates ``args`` on the way (Ray Data
    appends its retry advice) cannot change what the user reads, and it survives pickling between
    processes unchanged.
    """

    exit_code: int = 1

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.message = str(args[0]) if args else ""

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[SbirError], message: str, state: dict) -> SbirError:
    """Unpickle a project error without calling a subclass's own ``__init__`` signature."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class ConfigError(SbirError, ValueError):
    """A configuration problem, with the offending key(s) named in the message."""

    exit_code = 2


class UsageError(SbirError, ValueError):
    """A command-line argument that is malformed or out of range."""

    exit_code = 2


class CheckpointError(SbirError):
    """A checkpoint directory or file is missing, incomplete or inconsistent."""


class DeviceError(SbirError):
    """A requested device (e.g. ``cuda``) or cluster resource is not available."""


# Attributes in which distributed frameworks' wrapper exceptions keep what they wrap (Ray: RayTaskError.cause,
# ControllerError.controller_failure, WorkerGroupError.worker_failures = {rank: exception}).
_WRAPPED = ("cause", "controller_failure", "worker_failures")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps, outermost first, each once: ``__cause__``/``__context__``
    chains and the wrapped-exception attributes of framework wrappers."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner: list[object] = [current.__cause__, current.__context__]
        for name in _WRAPPED:
            value = getattr(current, name, None)
            inner += [value[k] for k in sorted(value)] if isinstance(value, dict) else [value]
        stack += [e for e in reversed(inner) if isinstance(e, BaseException)]


def _is_wrapper(exc: BaseException) -> bool:
    """A framework's copy of a project error (Ray makes classes like ``RayTaskError(DatasetError)``)."""
    return type(exc).__module__.startswith("ray.") or type(exc).__name__.startswith("RayTaskError(")


def project_error(exc: BaseException) -> SbirError | None:
    """The first :class:`SbirError` in ``exc``'s causes that is the project's own (not a framework copy)."""
    return next((e for e in causes(exc) if isinstance(e, SbirError) and not _is_wrapper(e)), None)

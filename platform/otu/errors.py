"""Errors a user can act on: raised before any work starts, printed as one line by the CLI."""


class OtuError(Exception):
    """Base class for user-facing errors (bad spec, bad data, unreachable service)."""


class SpecError(OtuError):
    """A spec (or an override) is invalid; the message names the field, the value and what is allowed."""


class DataError(OtuError):
    """Input data is missing, unreadable or inconsistent with the spec."""


def first_line(err: object) -> str:
    """The first non-blank line of an error's text (libraries' messages run over many lines)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip()[:300] if lines else type(err).__name__


def last_lines(err: object, count: int = 3) -> str:
    """The last ``count`` non-blank lines of an error's text, joined by `` | `` (a worker's traceback
    ends with what went wrong)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " | ".join(lines[-count:])[-600:] if lines else type(err).__name__


class RunFailed(Exception):
    """A run stopped for a reason the user can act on (it diverged); its outputs so far are kept."""


class ServiceError(OtuError):
    """A service otu needs (a Ray cluster, an MLflow server) cannot be reached; names the address."""

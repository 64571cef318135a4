"""The exception types for bad user input (UserError; ConfigError for a config key): each printed as
a single line, never as a traceback. Also the one error policy of the command line: how a file-system
failure reads (a full disk says how much space is left) and how long an error line may be."""

import errno
import shutil
import sys
from pathlib import Path

# An error line is read by a person (or grepped in a SLURM log): a message quoting a 3000-character
# path or value is cut in the middle, keeping its start (what failed) and its end (what to do).
MAX_ERROR_LINE = 400
ELLIPSIS = " ... "
# errno values that mean "the file system has no room left for this write".
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UserError(Exception):
    """Bad input (file, key, value) described in one line that names it."""


class ConfigError(UserError, ValueError):
    """A configuration problem, described in one line that names the offending key (ganpaint.config
    re-exports it; any module may raise it without importing the config schema)."""


def describe_os_error(error: OSError) -> str:
    """A file-system failure (disk full, permission, a file where a directory is needed) as one
    line naming the path: it is the machine's state, not a bug, so no traceback."""
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    reason = error.strerror or type(error).__name__
    if error.errno in NO_SPACE_ERRNOS:
        # What fills a disk is rarely the file named, so say how much room is left there.
        reason = f"{reason} ({free_space(error.filename)})" if error.filename else reason
    return f"{paths}: {reason}" if paths else f"{reason} ({error})"


class OutOfSpace(UserError):
    """A write that does not fit on its file system, named with the space left there."""


class WeightsNotFinite(UserError):
    """Weights or optimiser state holding inf or NaN, refused before they are saved: a checkpoint
    or an export is never written with them."""


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system holding `path` (its nearest existing parent)."""
    place = Path(path)
    while not place.exists() and place != place.parent:
        place = place.parent
    return shutil.disk_usage(place).free


def free_space(path: str | Path) -> str:
    """'12.3 MB free' on the file system holding `path`."""
    try:
        return f"{format_bytes(free_bytes(path))} free"
    except OSError:
        return "free space unknown"


def format_bytes(count: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `df -H` gives them)."""
    unit = "bytes"
    for larger in ("kB", "MB", "GB", "TB"):
        if count < 1000:
            break
        count, unit = count / 1000, larger
    return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"


def print_error(where: str, message: str) -> None:
    """`error_line` on stderr in a single write: the lines of several ranks sharing one log (with
    PYTHONUNBUFFERED, print writes the text and its newline apart) never run into each other."""
    sys.stderr.write(error_line(where, message) + "\n")
    sys.stderr.flush()


def error_line(where: str, message: str) -> str:
    """`where: error: message` on one line of at most MAX_ERROR_LINE characters (the middle of a
    longer message is cut), the form every command-line failure is printed in."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    line = f"{where}: error: {text}"
    if len(line) <= MAX_ERROR_LINE:
        return line
    keep = MAX_ERROR_LINE - len(ELLIPSIS)
    head = keep * 3 // 4
    return line[:head] + ELLIPSIS + line[len(line) - (keep - head) :]

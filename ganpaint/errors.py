"""The one exception type for bad user input: printed as a single line, never as a traceback."""


class UserError(Exception):
    """Bad input (file, key, value) described in one line that names it."""


def describe_os_error(error: OSError) -> str:
    """A file-system failure (disk full, permission, a file where a directory is needed) as one
    line naming the path: it is the machine's state, not a bug, so no traceback."""
    paths = " -> ".join(str(name) for name in (error.filename, error.filename2) if name)
    reason = error.strerror or type(error).__name__
    return f"{paths}: {reason}" if paths else f"{reason} ({error})"

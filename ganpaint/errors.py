"""The one exception type for bad user input: printed as a single line, never as a traceback."""


class UserError(Exception):
    """Bad input (file, key, value) described in one line that names it."""

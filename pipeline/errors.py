"""The one error type a stage reports as a single line, without a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input, configuration or environment whose message already says what is wrong and where
    (the file, row, key or value) and what was expected; every stage prints it as one line and exits 1."""

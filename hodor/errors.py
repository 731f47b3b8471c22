"""The one exception type for mistakes a user can make.

Command-line tools print its message on one line and exit with status 2; every
other exception is a bug in this project and is allowed to show a traceback.
"""


class HodorError(Exception):
    """A problem with the user's input, files or environment, with a message saying what to do."""

"""The one exception type for mistakes a user can fix (bad input, missing files, wrong options)."""


class UserError(Exception):
    """A problem with the user's input. The CLI prints its message on one line and exits with code 2."""

"""Errors a user can fix. The CLI prints their one-line message, never a traceback."""


class UserError(Exception):
    """A problem with the user's input; the message names the file or value and the fix."""


class DamagedRecord(UserError):
    """A record of an experiment that is missing or cannot be read; the message names the
    file, and a caller adds what it cannot do without it."""


class DataError(UserError):
    """A dataset problem."""


class WeightsError(UserError):
    """Pretrained encoder weights that cannot be found or loaded."""

"""Errors for people: each message says what is wrong, where (file, field) and how to fix it.

Kept free of torch so the command line can catch them without importing it.
"""


class ConfigError(ValueError):
    """A config value a person must fix; `str()` is the whole message."""

    def __init__(self, field_name: str, problem: str, fix: str, source: str = "",
                 heading: str = "config error") -> None:
        where = f" in {source}" if source else ""
        super().__init__(f"{heading}{where}: '{field_name}' {problem}. Fix: {fix}.")
        self.field, self.problem, self.fix = field_name, problem, fix


class DataError(ValueError):
    """Bad input data; the message names the file, what is wrong and the fix."""


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the file and the fix."""


class JoinTimeout(RuntimeError):
    """The RPC group did not form within --join-timeout; the message names who never came."""


class SupervisorGone(JoinTimeout):
    """The process that started this one died while the job was still forming: nobody will come."""

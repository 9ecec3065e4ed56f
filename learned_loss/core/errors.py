"""`UserError`: the one base class of mistakes a user can fix (flags, config, inputs, data).

Every such error in the package subclasses it (`TaskError`, `ShardingError`, `CorpusError`,
`ArtifactError`, `CheckpointMismatchError`, ...), so an entry point catches this one class:
`cli.run` prints its message as one `error: ...` line and exits 2. It is a `ValueError`, so
library callers that catch bad values keep working.
"""


class UserError(ValueError):
    """A mistake in the flags, config or inputs that the user can fix; the message names the
    problem and the fix."""

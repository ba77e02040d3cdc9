"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem with the user's input or config, stated in one line.

    Raise it with a message that names the file, row, column or config key at fault;
    the CLI prints ``error: <message>`` and exits with status 2, so anything that is
    not a ``PipelineError`` is a bug and keeps its traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

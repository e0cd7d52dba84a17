"""Errors a user can act on. Each renders as one line: what was wrong and what is valid."""


class ImgtrainError(Exception):
    """Base class: the CLI prints these as `error: <message>` and exits with status 2."""


class UnknownName(ImgtrainError, KeyError):
    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, list(known)
        super().__init__(f"unknown {kind} {name!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        message: str = self.args[0]
        return message


class ConfigError(ImgtrainError, ValueError):
    pass


class DataError(ImgtrainError):
    pass

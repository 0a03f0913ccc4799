"""The reference job: does nothing."""


def noop() -> None:
    return None

"""Another local helper module of the reliability workflow (a third, distinct env)."""


def transform(i: int) -> int:
    """Task value of the ``with_c`` app."""
    return (i * 7919) % 1009 + 100_000

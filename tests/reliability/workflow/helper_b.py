"""Local helper module of the reliability workflow (shipped as local code: its own env)."""


def transform(i: int) -> int:
    """Task value of the ``with_b`` app."""
    return i * i - 7

"""Library code: algorithms that list this library in their ``uses`` import it by alias."""


def identity(value):
    """Return ``value`` unchanged (replace with your own helpers)."""
    return value

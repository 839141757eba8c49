"""megazip: lossless compression with a MEGABYTE byte-level transformer.

>>> import megazip
>>> megazip.decompress(megazip.compress(b"hello")) == b"hello"
True
"""

__version__ = "0.10.0"


def compress(data: bytes, model=None, **options) -> bytes:
    """Compress bytes to a .mgz blob (see megazip.container.compress for options)."""
    from . import container

    return container.compress(data, model, **options)


def decompress(blob: bytes, model=None, **options) -> bytes:
    """Decompress a .mgz blob (see megazip.container.decompress for options)."""
    from . import container

    return container.decompress(blob, model, **options)


__all__ = ["compress", "decompress", "__version__"]

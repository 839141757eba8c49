"""megazip: lossless compression with a MEGABYTE byte-level transformer.

>>> import megazip
>>> megazip.decompress(megazip.compress(b"hello")) == b"hello"
True
"""

__version__ = "0.1.0"

from .container import compress, decompress  # noqa: E402

__all__ = ["compress", "decompress", "__version__"]

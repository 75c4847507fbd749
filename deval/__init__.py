"""deval: profile how a language model samples."""

from deval.version import __version__  # noqa: F401

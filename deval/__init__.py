"""deval: profile how a language model samples."""

__version__ = "0.1.0"

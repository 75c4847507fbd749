"""Next-item recommendation on MovieLens-format data (deval recommend): data, protocol, title matching, metrics."""

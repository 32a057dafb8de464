"""xmldoc layer."""

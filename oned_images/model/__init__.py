"""Plain value types (dataclasses) shared by every layer.

This package sits below domain/, store/, xmldoc/, rpc/ and config: it imports
nothing from them, so each layer may import it without an arrow running back up.
"""

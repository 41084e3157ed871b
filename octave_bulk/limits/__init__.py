"""Limiters: what every attempt passes before it is sent (rate, pauses after 429s)."""

__all__: list[str] = []

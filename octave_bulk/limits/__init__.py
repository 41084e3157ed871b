"""Limiters: what every attempt passes before it is sent (rate, window, pauses after 429s).

``base`` is the contract (:class:`~octave_bulk.limits.base.Limiter`, its opaque ticket, its
report, the factory type); ``factory`` the registry the ``limiter`` setting names and the
default factory; ``adaptive`` the default limiter, with its ``gate``, ``epoch``, ``evidence``
and ``verdicts``.
"""

__all__: list[str] = []

"""The run report: one HTML file with a run's charts, or the week view of several runs, from
the ledger and the output's files (``data.py`` reads, ``charts.py`` draws, ``page.py``
writes)."""

__all__: list[str] = []

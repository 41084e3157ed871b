"""What people and machines see of a run: log events, the progress bar, metrics."""

__all__: list[str] = []

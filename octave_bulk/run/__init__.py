"""The run: admission of built requests, workers that make the attempts, stops, the summary."""

__all__: list[str] = []

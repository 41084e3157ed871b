"""One call over HTTP: the client, and the classification of what came back."""

__all__: list[str] = []

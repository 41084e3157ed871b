"""Octave's agents: each one's endpoint, request and response models, and success rule."""

"""Durable run state next to the output: paths, atomic files, the done-set, in-flight slots,
the run lock and the resume cursor."""

__all__: list[str] = []

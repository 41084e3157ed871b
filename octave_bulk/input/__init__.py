"""Contacts in: bytes of a CSV/NDJSON export become :class:`Contact` or :class:`Reject` records.

One stage per module, in reading order: ``source`` turns bytes into raw records, using
``sniff`` (encoding, format, delimiter, header) and ``csvfix`` (the line feed and the recovery
of broken records); ``mapping`` maps CRM columns to canonical fields; ``normalize`` and
``templates`` derive field values; ``reader`` validates each row into a contact. ``records``
holds the records and field lists they all share.
"""

__all__: list[str] = []

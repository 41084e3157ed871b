"""Contacts in: bytes of a CSV/NDJSON export become :class:`Contact` or :class:`Reject` records.

``source`` reads raw records, ``mapping`` maps CRM columns to canonical fields, ``reader``
normalises and validates them into contacts.
"""

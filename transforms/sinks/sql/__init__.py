"""Database sinks that keep target tables exactly equal to the source tables.

    dead = events | 'WriteToPostgres' >> WriteChangesToPostgres('postgresql://app@db/replica')
    dead = events | 'WriteToMariaDB' >> WriteChangesToMySQL('mysql://app@db:3306/replica')

Both take a PCollection of :class:`~transforms.envelope.ChangeEvent` and return the dead-letter
PCollection.  Delivery may repeat or reorder events; every target row remembers the source
position that last wrote it, deletes and truncates leave position marks, so the target ends up
as the source was (effectively-once).  See docs/sinks.md.
"""
from transforms.sinks.sql.mysql import WriteChangesToMySQL
from transforms.sinks.sql.postgres import WriteChangesToPostgres

__all__ = ['WriteChangesToMySQL', 'WriteChangesToPostgres']

"""A durable registry of every table schema version, at a local directory, ``gs://`` or ``s3://``.

    registry = SchemaRegistry('/var/lib/changebeam/schemas')
    version = registry.register(table_schema, position=event.source.sort_key)
    version.version          # the same id for the same schema, on every worker, after restarts

Version ids are content fingerprints (63 bits of SHA-256 over the schema's canonical JSON), so
workers and restarted pipelines agree on them without coordinating: registering the same schema
twice yields the same id, and no counter needs an atomic increment on an object store.  Each
version is one JSON file, ``URI/<schema.table>/<id as 16 hex digits>.json``, written once, with
the source position where it first took effect; :meth:`SchemaRegistry.versions` orders a
table's versions by that position.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import urllib.parse
from typing import Any

from transforms.envelope import Column, Kind, TableSchema

__all__ = ['SchemaRegistry', 'SchemaVersion', 'fingerprint', 'schema_from_json',
           'schema_to_json']


def schema_to_json(table: TableSchema) -> dict[str, Any]:
    """A TableSchema as plain JSON (the registry's file format, and the fingerprint's input)."""
    return {
        'schema': table.schema,
        'table': table.table,
        'key': list(table.key),
        'columns': [{
            'name': c.name, 'kind': c.kind.value, 'source_type': c.source_type,
            'nullable': c.nullable, 'element': c.element.value if c.element else None,
            'precision': c.precision, 'scale': c.scale, 'symbols': list(c.symbols),
            'default': c.default,
        } for c in table.columns],
    }


def schema_from_json(doc: dict[str, Any]) -> TableSchema:
    return TableSchema(
        schema=doc['schema'], table=doc['table'], key=tuple(doc['key']),
        columns=tuple(Column(
            name=c['name'], kind=Kind(c['kind']), source_type=c['source_type'],
            nullable=c['nullable'], element=Kind(c['element']) if c['element'] else None,
            precision=c['precision'], scale=c['scale'], symbols=tuple(c['symbols']),
            default=c['default']) for c in doc['columns']))


def fingerprint(table: TableSchema) -> int:
    canonical = json.dumps(schema_to_json(table), sort_keys=True, separators=(',', ':'))
    return int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], 'big') >> 1


@dataclasses.dataclass(frozen=True)
class SchemaVersion:
    """One registered version: ``position`` is the source sort key where it took effect."""

    table: str
    version: int
    schema: TableSchema
    position: str
    registered_ms: int


class SchemaRegistry:
    """Registers and lists table schema versions under ``uri``; safe to share between workers."""

    def __init__(self, uri: str) -> None:
        if not uri:
            raise ValueError('schema registry URI is empty; use a directory, gs://… or s3://…')
        self._uri = uri.rstrip('/')
        self._remote = '://' in uri
        self._cache: dict[tuple[str, int], SchemaVersion] = {}
        self._lock = threading.Lock()

    @property
    def uri(self) -> str:
        return self._uri

    def _table_dir(self, name: str) -> str:
        return f'{self._uri}/{urllib.parse.quote(name, safe="._$-")}'

    def register(self, table: TableSchema, position: str = '') -> SchemaVersion:
        """The version of ``table``'s schema, registering it first if it is new."""
        version_id = fingerprint(table)
        key = (table.name, version_id)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return cached
        path = f'{self._table_dir(table.name)}/{version_id:016x}.json'
        existing = self._read(path)
        if existing is not None:
            version = existing
        else:
            version = SchemaVersion(table.name, version_id, table, position,
                                    int(time.time() * 1000))
            self._write(path, {'table': table.name, 'version': version_id, 'position': position,
                               'registered_ms': version.registered_ms,
                               'schema': schema_to_json(table)})
        with self._lock:
            self._cache[key] = version
        return version

    def lookup(self, table: TableSchema) -> SchemaVersion | None:
        """The registered version of exactly this schema, or None (nothing is written)."""
        version_id = fingerprint(table)
        with self._lock:
            cached = self._cache.get((table.name, version_id))
        if cached is not None:
            return cached
        found = self._read(f'{self._table_dir(table.name)}/{version_id:016x}.json')
        if found is not None:
            with self._lock:
                self._cache[(table.name, version_id)] = found
        return found

    def versions(self, name: str) -> list[SchemaVersion]:
        """Every registered version of table ``name``, oldest (by source position) first."""
        found = []
        for path in self._list(self._table_dir(name)):
            version = self._read(path)
            if version is not None:
                found.append(version)
        return sorted(found, key=lambda v: (v.position, v.registered_ms))

    def latest(self, name: str) -> SchemaVersion | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    # -- storage: local files directly (atomic rename), remote through Beam's FileSystems -------

    def _read(self, path: str) -> SchemaVersion | None:
        try:
            if self._remote:
                from apache_beam.io.filesystems import FileSystems
                if not FileSystems.exists(path):
                    return None
                with FileSystems.open(path) as handle:
                    doc = json.loads(handle.read())
            else:
                with open(path, encoding='utf-8') as handle:
                    doc = json.load(handle)
        except FileNotFoundError:
            return None
        return SchemaVersion(doc['table'], doc['version'], schema_from_json(doc['schema']),
                             doc['position'], doc['registered_ms'])

    def _write(self, path: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        if self._remote:
            from apache_beam.io.filesystems import FileSystems
            with FileSystems.create(path) as handle:  # an object appears whole or not at all
                handle.write(data)
            return
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        temp = f'{path}.{os.getpid()}.{threading.get_ident()}.tmp'
        with open(temp, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)

    def _list(self, directory: str) -> list[str]:
        if self._remote:
            from apache_beam.io.filesystems import FileSystems
            results = FileSystems.match([f'{directory}/*.json'])
            return [m.path for m in results[0].metadata_list]
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [os.path.join(directory, n) for n in names if n.endswith('.json')]

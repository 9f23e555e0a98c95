"""GTID resume positions and the dump stream's packet framing."""
from __future__ import annotations

import struct
import uuid

import pytest

from transforms.sources.mysql.gtid import GtidError, MariaGtidState, MySqlGtidSet
from transforms.sources.mysql.stream import BinlogPosition, _complete_packets

SID = '3e11fa47-71ca-11e1-9e33-c80aa9429562'


def test_mariadb_state_keeps_the_last_gtid_per_domain() -> None:
    state = MariaGtidState.parse('1-7-15, 0-1-120')
    assert str(state) == '0-1-120,1-7-15'
    state.add('0-2-121')
    state.advance(1, 7, 16)
    assert str(state) == '0-2-121,1-7-16'
    assert not MariaGtidState.parse('')
    with pytest.raises(GtidError, match='0-1'):
        MariaGtidState.parse('0-1')


def test_mysql_set_merges_intervals() -> None:
    gset = MySqlGtidSet.parse(f'{SID}:1-5:7')
    gset.add(f'{SID}:6')
    assert str(gset) == f'{SID}:1-7'
    gset.add(f'{SID}:9')
    other = '00000000-0000-0000-0000-000000000001'
    gset.add(f'{other}:1')
    assert str(gset) == f'{other}:1,{SID}:1-7:9'
    with pytest.raises(GtidError):
        MySqlGtidSet.parse('not-a-uuid:1')


def test_mysql_set_binary_form_for_com_binlog_dump_gtid() -> None:
    encoded = MySqlGtidSet.parse(f'{SID}:1-5:7').encode()
    assert encoded == (struct.pack('<Q', 1) + uuid.UUID(SID).bytes + struct.pack('<Q', 2)
                       + struct.pack('<qq', 1, 6) + struct.pack('<qq', 7, 8))


def test_position_needs_a_file_or_a_gtid() -> None:
    with pytest.raises(ValueError, match='file'):
        BinlogPosition()
    with pytest.raises(ValueError, match='pos 3'):
        BinlogPosition('bin.000001', 3)
    assert BinlogPosition(gtid='0-1-5').pos == 4


def _packet(payload: bytes, seq: int = 1) -> bytes:
    return len(payload).to_bytes(3, 'little') + bytes([seq]) + payload


def test_only_whole_packets_are_handed_to_the_decoder() -> None:
    one, two = _packet(b'\x00' + bytes(30)), _packet(b'\x00' + bytes(10))
    assert _complete_packets(bytearray(one + two)) == len(one + two)
    assert _complete_packets(bytearray(one + two[:-1])) == len(one)
    assert _complete_packets(bytearray(one[:3])) == 0


def test_an_event_of_16_mb_counts_only_with_its_last_packet() -> None:
    first = b'\xff\xff\xff\x01' + bytes(0xffffff)
    last = _packet(bytes(5), 2)
    assert _complete_packets(bytearray(first)) == 0
    assert _complete_packets(bytearray(first + last)) == len(first) + len(last)

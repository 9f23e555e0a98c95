"""The pgoutput decoder against frames captured from PostgreSQL 15 and against a spec encoder."""
from __future__ import annotations

import datetime as dt
import pickle
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.pgoutput_frames import RawText, encode, tuple_data
from transforms.sources.postgres.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputDecoder,
    PgOutputError,
    Relation,
    RelationColumn,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeMessage,
    Update,
)

# ---------------------------------------------------------------------------------------------
# Real frames: captured with START_REPLICATION from a throwaway PostgreSQL 15.20 (pgoutput,
# proto_version 1 and 2) for
#   CREATE TYPE cap.mood AS ENUM (...); CREATE DOMAIN cap.posint AS integer ...;
#   CREATE TABLE cap.t (id int PRIMARY KEY, n numeric(10,2), s varchar(20), m cap.mood,
#                       p cap.posint, ts timestamptz, big text, arr int[], b bytea);
#   CREATE TABLE cap.full_t (id int, v text) -- REPLICA IDENTITY FULL

_T_COLUMNS = (
    RelationColumn('id', 23, -1, True), RelationColumn('n', 1700, 655366, False),
    RelationColumn('s', 1043, 24, False), RelationColumn('m', 16613, -1, False),
    RelationColumn('p', 16620, -1, False), RelationColumn('ts', 1184, -1, False),
    RelationColumn('big', 25, -1, False), RelationColumn('arr', 1007, -1, False),
    RelationColumn('b', 17, -1, False),
)
_ROW_AFTER = ('1.25', 'héllo', 'happy', '7', '2024-02-29 12:34:56.5+00', UNCHANGED_TOAST,
              '{1,NULL,3}', '\\x00ff')

REAL_V1 = [
    ('4200000000018341e8000303cb5cf1915700000344',
     Begin(final_lsn=25379304, commit_ts=1795281702711639, xid=836)),
    ('59000040e5636170006d6f6f6400', TypeMessage(None, 16613, 'cap', 'mood')),
    # A domain's Type message names its *base* type (pg_catalog is sent as '').
    ('59000040ec00696e743400', TypeMessage(None, 16620, '', 'int4')),
    ('52000040ee6361700074006400090169640000000017ffffffff006e00000006a4000a000600730000000413'
     '00000018006d00000040e5ffffffff007000000040ecffffffff00747300000004a0ffffffff00626967000000'
     '0019ffffffff0061727200000003efffffffff00620000000011ffffffff',
     Relation(None, 16622, 'cap', 't', 'd', _T_COLUMNS)),
    ('430000000000018341e80000000001834218000303cb5cf19157',
     Commit(flags=0, commit_lsn=25379304, end_lsn=25379352, commit_ts=1795281702711639)),
    # UPDATE cap.t SET n = 1.25: the unchanged TOASTed 'big' column is sent as 'u'.
    ('55000040ee4e00097400000001317400000004312e3235740000000668c3a96c6c6f74000000056861707079'
     '7400000001377400000018323032342d30322d32392031323a33343a35362e352b303075740000000a7b312c4e'
     '554c4c2c337d74000000065c7830306666',
     Update(None, 16622, None, None, ('1', *_ROW_AFTER))),
    # UPDATE cap.t SET id = 2: the old key as 'K' (non-key columns null), then the new row.
    ('55000040ee4b00097400000001316e6e6e6e6e6e6e6e4e00097400000001327400000004312e32357400000006'
     '68c3a96c6c6f740000000568617070797400000001377400000018323032342d30322d32392031323a33343a35'
     '362e352b303075740000000a7b312c4e554c4c2c337d74000000065c7830306666',
     Update(None, 16622, None, ('1', None, None, None, None, None, None, None, None),
            ('2', *_ROW_AFTER))),
    ('52000040f56361700066756c6c5f74006600020169640000000017ffffffff01760000000019ffffffff',
     Relation(None, 16629, 'cap', 'full_t', 'f',
              (RelationColumn('id', 23, -1, True), RelationColumn('v', 25, -1, True)))),
    ('49000040f54e00027400000001316e', Insert(None, 16629, ('1', None))),
    ('55000040f54f00027400000001316e4e0002740000000131740000000161',
     Update(None, 16629, ('1', None), None, ('1', 'a'))),
    ('44000040f54f0002740000000131740000000161', Delete(None, 16629, ('1', 'a'), None)),
    ('44000040ee4b00097400000001326e6e6e6e6e6e6e6e',
     Delete(None, 16622, None, ('2', None, None, None, None, None, None, None, None))),
    ('4d0100000000018354e8706678000000000568656c6c6f',
     LogicalMessage(None, True, 25384168, 'pfx', b'hello')),
    ('4d0000000000018355506e7400000000020001',
     LogicalMessage(None, False, 25384272, 'nt', b'\x00\x01')),
    ('540000000203000040ee000040f5', Truncate(None, (16622, 16629), True, True)),
    ('4f0000000000abcdef6361705f6f726967696e00', Origin(0xABCDEF, 'cap_origin')),
    # binary 'true': every column in its binary send format (int4, numeric 1.5, varchar, bytea).
    ('490000420c4e0009620000000400000007620000000c000200000000000200011388620000000368c3a96e6e6e'
     '6e6e620000000200ff',
     Insert(None, 16908, (b'\x00\x00\x00\x07',
                          b'\x00\x02\x00\x00\x00\x00\x00\x02\x00\x01\x13\x88', 'hé'.encode(),
                          None, None, None, None, None, b'\x00\xff'))),
]

# proto_version 2, streaming on: a large transaction streamed in blocks, a rolled-back
# subtransaction (Stream Abort with subxid), the commit, then a streamed transaction rolled back.
REAL_V2_SEQUENCE = [
    ('530000036001', StreamStart(864, True)),
    ('590000036000004122636170006d6f6f6400', TypeMessage(864, 16674, 'cap', 'mood')),
    ('52000003600000412c6361700074006400090169640000000017ffffffff006e00000006a4000a0006007300'
     '0000041300000018006d0000004122ffffffff0070000000412affffffff00747300000004a0ffffffff006269'
     '670000000019ffffffff0061727200000003efffffffff00620000000011ffffffff',
     Relation(864, 16684, 'cap', 't', 'd', (
         *_T_COLUMNS[:3], RelationColumn('m', 16674, -1, False),
         RelationColumn('p', 16682, -1, False), *_T_COLUMNS[5:]))),
    ('49000003600000412c4e00097400000001316e740000000272316e6e6e6e6e6e',
     Insert(864, 16684, ('1', None, 'r1', None, None, None, None, None, None))),
    ('45', StreamStop()),
    ('530000036000', StreamStart(864, False)),
    ('4d000003600100000000018e2818696e000000000673747265616d',
     LogicalMessage(864, True, 26093592, 'in', b'stream')),
    ('45', StreamStop()),
    ('410000036000000361', StreamAbort(864, 865)),
    ('630000036000000000000191187000000000019118a0000303cb5d30835b',
     StreamCommit(864, 0, 26286192, 26286240, 1795281706836827)),
    ('530000036201', StreamStart(866, True)),
    ('49000003620000412c4e00097400000004353030316e740000000572353030316e6e6e6e6e6e',
     Insert(866, 16684, ('5001', None, 'r5001', None, None, None, None, None, None))),
    ('45', StreamStop()),
    ('410000036200000362', StreamAbort(866, 866)),
]


_REAL_V1_IDS = [type(message).__name__ for _, message in REAL_V1]


@pytest.mark.parametrize(('frame', 'expected'), REAL_V1, ids=_REAL_V1_IDS)
def test_real_v1_frames_decode(frame: str, expected: object) -> None:
    assert PgOutputDecoder().decode(bytes.fromhex(frame)) == expected


@pytest.mark.parametrize(('frame', 'expected'), REAL_V1, ids=_REAL_V1_IDS)
def test_encoder_reproduces_real_frames(frame: str, expected: object) -> None:
    # Proves the test encoder (and so every property test below) speaks the server's format.
    assert encode(expected).hex() == frame


def test_real_v2_stream_sequence() -> None:
    decoder = PgOutputDecoder()
    got = [decoder.decode(bytes.fromhex(frame)) for frame, _ in REAL_V2_SEQUENCE]
    assert got == [expected for _, expected in REAL_V2_SEQUENCE]
    assert not decoder.in_stream


def test_in_stream_insert_without_stream_start_is_misread() -> None:
    # The same bytes outside a stream block are a different (malformed) Insert: state matters.
    frame = bytes.fromhex(REAL_V2_SEQUENCE[3][0])
    with pytest.raises(PgOutputError):
        PgOutputDecoder().decode(frame)


def test_commit_timestamp_is_converted_to_unix_microseconds() -> None:
    # 2000-01-01 00:00:00 UTC (PostgreSQL's epoch) + 1.5 s
    frame = b'B' + struct.pack('!QqI', 1, 1_500_000, 7)
    begin = PgOutputDecoder().decode(frame)
    assert isinstance(begin, Begin)
    moment = dt.datetime(2000, 1, 1, 0, 0, 1, 500_000, tzinfo=dt.timezone.utc)
    assert begin.commit_ts == int(moment.timestamp()) * 1_000_000 + 500_000
    real = PgOutputDecoder().decode(bytes.fromhex(REAL_V1[0][0]))
    assert dt.datetime.fromtimestamp(real.commit_ts / 1e6, dt.timezone.utc).year >= 2024


def test_memoryview_and_bytearray_payloads() -> None:
    frame = bytes.fromhex(REAL_V1[8][0])
    expected = REAL_V1[8][1]
    assert PgOutputDecoder().decode(memoryview(frame)) == expected
    assert PgOutputDecoder().decode(bytearray(frame)) == expected
    assert PgOutputDecoder().decode(memoryview(b'xx' + frame)[2:]) == expected


def test_unchanged_toast_is_a_singleton_that_survives_pickling() -> None:
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    assert repr(UNCHANGED_TOAST) == 'UNCHANGED_TOAST'
    assert type(UNCHANGED_TOAST)() is UNCHANGED_TOAST


def test_decoded_messages_are_frozen_and_hashable() -> None:
    insert = PgOutputDecoder().decode(bytes.fromhex(REAL_V1[8][0]))
    with pytest.raises(AttributeError):
        insert.new = ()  # type: ignore[misc]
    assert hash(insert) == hash(Insert(None, 16629, ('1', None)))


def test_stream_abort_of_protocol_4_is_accepted() -> None:
    frame = b'A' + struct.pack('!IIQq', 5, 6, 100, 200)
    assert PgOutputDecoder().decode(frame) == StreamAbort(5, 6)


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize('type_byte', [b'Z', b'b', b'P', b'K', b'r', b'p', b'\x00'])
def test_unknown_message_type_raises_naming_it(type_byte: bytes) -> None:
    with pytest.raises(PgOutputError) as info:
        PgOutputDecoder().decode(type_byte + b'\x00' * 20)
    assert info.value.message_type == type_byte.decode('latin-1')
    assert repr(type_byte.decode('latin-1')) in str(info.value)
    assert 'unknown message type' in str(info.value)


def test_empty_payload_raises() -> None:
    with pytest.raises(PgOutputError, match='empty'):
        PgOutputDecoder().decode(b'')


def test_truncated_insert_names_type_and_offset() -> None:
    frame = bytes.fromhex(REAL_V1[8][0])  # I, oid, N, 2 columns: 't' '1', 'n'
    with pytest.raises(PgOutputError) as info:
        PgOutputDecoder().decode(frame[:-1])
    assert info.value.message_type == 'I'
    assert info.value.offset == len(frame) - 1
    assert "'I'" in str(info.value) and f'offset {len(frame) - 1}' in str(info.value)


def test_text_that_is_not_utf8_names_the_column_and_the_bytes() -> None:
    # A SQL_ASCII database's bytes, as its replication connection sends them.
    frame = (b'I' + struct.pack('!I', 1) + b'N' + tuple_data(['1', RawText(b'na\xefve')]))
    with pytest.raises(PgOutputError) as info:
        PgOutputDecoder().decode(frame)
    assert info.value.message_type == 'I'
    assert "the text of column 2 is not UTF-8 (b'na\\xefve')" in str(info.value)
    assert info.value.offset == frame.index(b'\xef')


def test_value_longer_than_frame_raises() -> None:
    frame = b'I' + struct.pack('!I', 1) + b'N' + struct.pack('!H', 1) + b't' + struct.pack(
        '!I', 10) + b'abc'
    with pytest.raises(PgOutputError, match='overruns'):
        PgOutputDecoder().decode(frame)


def test_unknown_tuple_column_kind_raises() -> None:
    frame = b'I' + struct.pack('!I', 1) + b'N' + struct.pack('!H', 1) + b'x'
    with pytest.raises(PgOutputError, match="kind 'x'") as info:
        PgOutputDecoder().decode(frame)
    assert info.value.offset == 8


def test_invalid_utf8_text_value_raises() -> None:
    frame = b'I' + struct.pack('!I', 1) + b'N' + tuple_data(['ok'])[:-2] + b'\xff\xfe'
    with pytest.raises(PgOutputError, match='UTF-8'):
        PgOutputDecoder().decode(frame)


def test_wrong_tuple_markers_raise() -> None:
    with pytest.raises(PgOutputError, match="marker 'X'"):
        PgOutputDecoder().decode(b'I' + struct.pack('!I', 1) + b'X' + tuple_data([]))
    with pytest.raises(PgOutputError, match="marker 'N'"):
        PgOutputDecoder().decode(b'D' + struct.pack('!I', 1) + b'N' + tuple_data([]))
    with pytest.raises(PgOutputError, match="marker 'K'"):
        PgOutputDecoder().decode(b'U' + struct.pack('!I', 1) + b'K' + tuple_data([]) + b'K'
                                 + tuple_data([]))


def test_stream_block_nesting_errors() -> None:
    decoder = PgOutputDecoder()
    with pytest.raises(PgOutputError, match='outside a stream'):
        decoder.decode(b'E')
    decoder.decode(encode(StreamStart(1, True)))
    with pytest.raises(PgOutputError, match='inside a stream'):
        decoder.decode(encode(StreamStart(2, False)))
    assert decoder.in_stream
    assert decoder.decode(b'E') == StreamStop()
    assert not decoder.in_stream


# ---------------------------------------------------------------------------------------------
# Properties: encode with the spec encoder, decode, compare.

_u32 = st.integers(0, 2**32 - 1)
_lsn = st.integers(0, 2**64 - 1)
# commit timestamps: any int64 of PostgreSQL's epoch, expressed from the Unix epoch
_ts = st.integers(-(2**63), 2**63 - 1).map(lambda pg: pg + 946_684_800_000_000)
_name = st.text(st.characters(blacklist_characters='\0', blacklist_categories=('Cs',)),
                max_size=20)
_value = st.one_of(st.none(), st.just(UNCHANGED_TOAST), st.text(max_size=30),
                   st.binary(max_size=30))
_values = st.lists(_value, max_size=12).map(tuple)
_xid = st.one_of(st.none(), _u32)
_relation_column = st.builds(RelationColumn, _name, _u32, st.integers(-(2**31), 2**31 - 1),
                             st.booleans())

_messages = st.one_of(
    st.builds(Begin, _lsn, _ts, _u32),
    st.builds(Commit, st.integers(0, 255), _lsn, _lsn, _ts),
    st.builds(Origin, _lsn, _name),
    st.builds(Relation, _xid, _u32, _name, _name, st.sampled_from('dnfi'),
              st.lists(_relation_column, max_size=8).map(tuple)),
    st.builds(TypeMessage, _xid, _u32, _name, _name),
    st.builds(Insert, _xid, _u32, _values),
    st.builds(Update, _xid, _u32, st.none(), st.none(), _values),
    st.builds(Update, _xid, _u32, _values, st.none(), _values),
    st.builds(Update, _xid, _u32, st.none(), _values, _values),
    st.builds(Delete, _xid, _u32, _values, st.none()),
    st.builds(Delete, _xid, _u32, st.none(), _values),
    st.builds(Truncate, _xid, st.lists(_u32, max_size=5).map(tuple), st.booleans(),
              st.booleans()),
    st.builds(LogicalMessage, _xid, st.booleans(), _lsn, _name, st.binary(max_size=40)),
    st.builds(StreamCommit, _u32, st.integers(0, 255), _lsn, _lsn, _ts),
    st.builds(StreamAbort, _u32, _u32),
)


def _decode_as_sent(message: object) -> object:
    """Decode ``message``'s frame in the state the server would send it in."""
    decoder = PgOutputDecoder()
    if getattr(message, 'xid', None) is not None and not isinstance(
            message, (Begin, StreamCommit, StreamAbort)):
        decoder.decode(encode(StreamStart(message.xid, True)))  # type: ignore[attr-defined]
    return decoder.decode(encode(message))


@given(_messages)
def test_roundtrip(message: object) -> None:
    assert _decode_as_sent(message) == message


@given(_messages, st.data())
def test_every_truncation_raises_naming_the_type(message: object, data: st.DataObject) -> None:
    frame = encode(message)
    cut = data.draw(st.integers(1, len(frame) - 1), label='cut') if len(frame) > 1 else None
    if cut is None:
        return
    decoder = PgOutputDecoder()
    in_stream = getattr(message, 'xid', None) is not None and not isinstance(
        message, (Begin, StreamCommit, StreamAbort))
    decoder.in_stream = in_stream
    with pytest.raises(PgOutputError) as info:
        decoder.decode(frame[:cut])
    assert info.value.message_type == chr(frame[0])
    assert 0 <= info.value.offset <= cut


@given(_messages)
def test_trailing_garbage_raises(message: object) -> None:
    decoder = PgOutputDecoder()
    decoder.in_stream = getattr(message, 'xid', None) is not None and not isinstance(
        message, (Begin, StreamCommit, StreamAbort))
    with pytest.raises(PgOutputError, match=r'trailing|expected'):
        decoder.decode(encode(message) + b'\x00')


@given(st.lists(st.tuples(_u32, _values), max_size=5), _u32)
def test_stream_block_tracks_xids(inserts: list[tuple[int, tuple[object, ...]]], xid: int
                                  ) -> None:
    decoder = PgOutputDecoder()
    streamed = [Insert(xid, oid, values) for oid, values in inserts]
    plain = [Insert(None, oid, values) for oid, values in inserts]
    messages = [StreamStart(xid, True), *streamed, StreamStop(),
                StreamCommit(xid, 0, 1, 2, 3), *plain]
    assert [decoder.decode(encode(m)) for m in messages] == messages


@pytest.mark.parametrize('frame', [b'S', b'S\x00\x00\x00\x01', b'E\x00', b'B' + b'\x00' * 19,
                                   b'C' + b'\x00' * 24, b'c' + b'\x00' * 28, b'A\x00\x00',
                                   b'O' + b'\x00' * 8, b'O' + b'\x00' * 9 + b'x'])
def test_short_fixed_frames_raise(frame: bytes) -> None:
    with pytest.raises(PgOutputError) as info:
        PgOutputDecoder().decode(frame)
    assert info.value.message_type == chr(frame[0])


def test_stream_message_missing_xid_raises() -> None:
    decoder = PgOutputDecoder()
    decoder.decode(encode(StreamStart(9, True)))
    with pytest.raises(PgOutputError, match='transaction id') as info:
        decoder.decode(b'I\x00\x00')
    assert info.value.message_type == 'I'

"""The SDK's replies, decoded by its native module straight from the bytes, are exactly what
protobuf's `json_format.MessageToDict` returns for them (the mapping the SDK has always given):
every reply type, filled at random with the edge values of each field type — the same keys in
the same order, the same values and value types."""

from __future__ import annotations

import math
import random

import pytest

memoire = pytest.importorskip("memoire", reason="pip install ./sdk-python (make test does)")

from google.protobuf import descriptor, json_format  # noqa: E402
from memoire import _messages, _native  # noqa: E402

F = descriptor.FieldDescriptor
EDGES = {
    F.TYPE_FLOAT: [0.0, -0.0, 0.1, 1 / 3, 1e-7, 3.4e38, 1.17549435e-38, 123456.789, 0.592025, 16777217.0,
                   math.inf, -math.inf, math.nan],
    F.TYPE_DOUBLE: [0.0, -0.0, 0.1, 1 / 3, 1e-300, 1.7e308, math.inf, -math.inf, math.nan],
    F.TYPE_INT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    F.TYPE_SINT32: [0, 1, -1, 2**31 - 1, -(2**31)],
    F.TYPE_SFIXED32: [0, 1, -1, 2**31 - 1, -(2**31)],
    F.TYPE_UINT32: [0, 1, 300, 2**32 - 1],
    F.TYPE_FIXED32: [0, 1, 2**32 - 1],
    F.TYPE_INT64: [0, 1, -1, 2**63 - 1, -(2**63)],
    F.TYPE_SINT64: [0, -1, 2**63 - 1, -(2**63)],
    F.TYPE_SFIXED64: [0, -1, 2**63 - 1, -(2**63)],
    F.TYPE_UINT64: [0, 1, 2**53 + 1, 2**64 - 1],
    F.TYPE_FIXED64: [0, 2**64 - 1],
    F.TYPE_BOOL: [False, True],
    F.TYPE_STRING: ["", "a", "héllo ✓ 🧠", "two\nlines \"quoted\""],
    F.TYPE_BYTES: [b"", b"\x00\xff", b"abc"],
}
SECONDS = [0, 1, -1, 951_782_400, 1_700_000_000, -62_135_596_800, 253_402_300_799]
NANOS = [0, 1, 1_000, 1_000_000, 120_000_000, 999_999_999, 123_456_789]


def fill(message, rng: random.Random, depth: int = 0) -> None:
    """Sets a random subset of `message`'s fields (every oneof at most once) to edge values."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds, message.nanos = rng.choice(SECONDS), rng.choice(NANOS)
        return
    if name == "google.protobuf.Duration":
        seconds, nanos = rng.choice(SECONDS[:5]), rng.choice(NANOS)
        sign = rng.choice([1, -1])
        message.seconds, message.nanos = sign * seconds, sign * nanos
        return
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.25:
            continue
        if field.is_repeated:
            for _ in range(rng.choice([0, 1, 3])):
                add(message, field, rng, depth)
        elif field.message_type is not None:
            if depth < 4:
                fill(getattr(message, field.name), rng, depth + 1)
                getattr(message, field.name).SetInParent()
        else:
            setattr(message, field.name, value(field, rng))


def add(message, field, rng: random.Random, depth: int) -> None:
    items = getattr(message, field.name)
    if field.message_type is not None:
        if depth < 4:
            fill(items.add(), rng, depth + 1)
    else:
        items.append(value(field, rng))


def value(field, rng: random.Random):
    if field.enum_type is not None:
        # An open enum keeps a number it does not name.
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    return rng.choice(EDGES[field.type])


def expected(reply_class, data: bytes) -> dict:
    message = reply_class.FromString(data)
    try:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    except TypeError:  # protobuf < 5.26
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, including_default_value_fields=True)


def shape(x):
    """Keys in order and value types, all the way down (dict equality ignores both)."""
    if isinstance(x, dict):
        return [(k, shape(v)) for k, v in x.items()]
    if isinstance(x, list):
        return [shape(v) for v in x]
    return type(x).__name__


def same(data: bytes, reply_class) -> None:
    got = _native.decode_reply(reply_class.DESCRIPTOR.full_name, data)
    want = expected(reply_class, data)
    assert got == want
    assert shape(got) == shape(want)


REPLIES = sorted({reply for _, _, reply in _messages.METHODS.values()}, key=lambda c: c.DESCRIPTOR.full_name)


@pytest.mark.parametrize("reply_class", REPLIES, ids=lambda c: c.DESCRIPTOR.name)
def test_every_reply_type_decodes_as_message_to_dict_does(reply_class):
    rng = random.Random(reply_class.DESCRIPTOR.full_name)
    same(b"", reply_class)
    for _ in range(40):
        message = reply_class()
        fill(message, rng)
        same(message.SerializeToString(), reply_class)


def test_a_recall_reply_with_floats_timestamps_and_unknown_enums():
    _, _, reply_class = _messages.METHODS["Recall"]
    rng = random.Random(7)
    for _ in range(200):
        message = reply_class()
        fill(message, rng)
        data = message.SerializeToString()
        same(data, reply_class)
        # A message field that occurs twice is merged; fields it does not know are skipped.
        other = reply_class()
        fill(other, rng)
        same(data + other.SerializeToString(), reply_class)
        same(data + b"\xa0\x3e\x05" + b"\xaa\x3e\x02hi" + b"\xad\x3e\x00\x00\x00\x00", reply_class)


def test_the_last_member_of_a_oneof_on_the_wire_wins():
    from google.protobuf import message_factory
    item_class = message_factory.GetMessageClass(_messages._pool.FindMessageTypeByName("memoire.v1.RecallItem"))
    oneof = item_class.DESCRIPTOR.oneofs[0]
    assert len(oneof.fields) >= 2, oneof.name
    rng = random.Random(3)
    parts = []
    for field in oneof.fields:
        item = item_class()
        fill(getattr(item, field.name), rng)
        getattr(item, field.name).SetInParent()
        parts.append(item.SerializeToString())
    for data in (parts[0] + parts[1], parts[1] + parts[0], parts[0] + parts[1] + parts[0]):
        same(data, item_class)


def test_a_duration_renders_as_message_to_dict_does():
    # No reply holds a Duration; a request does, and decodes the same way.
    from google.protobuf import message_factory
    request_class = message_factory.GetMessageClass(_messages._pool.FindMessageTypeByName("memoire.v1.IngestRequest"))
    for seconds, nanos in [(0, 0), (5, 0), (-5, -120_000_000), (1, 1_000), (-1, -1), (0, -5),
                           (315_576_000_000, 999_999_999), (-315_576_000_000, 0)]:
        request = request_class()
        request.wait_timeout.seconds, request.wait_timeout.nanos = seconds, nanos
        same(request.SerializeToString(), request_class)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


@pytest.mark.parametrize("reply_class", REPLIES, ids=lambda c: c.DESCRIPTOR.name)
def test_a_field_of_an_unexpected_wire_type_is_skipped_as_protobuf_skips_it(reply_class):
    rng = random.Random(11)
    message = reply_class()
    fill(message, rng)
    data = message.SerializeToString()
    for field in reply_class.DESCRIPTOR.fields:
        if field.type in (F.TYPE_STRING, F.TYPE_BYTES, F.TYPE_MESSAGE, F.TYPE_DOUBLE, F.TYPE_FLOAT,
                          F.TYPE_FIXED32, F.TYPE_SFIXED32):
            odd = _varint(field.number << 3 | 0) + b"\x07"  # a varint where it has none
        else:
            odd = _varint(field.number << 3 | 5) + b"\x00\x00\x80\x3f"  # 32 bits where it has a varint
        same(data + odd, reply_class)
        same(odd + data, reply_class)


@pytest.mark.parametrize("data", [b"\x0a\x05ab", b"\x08", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                                  b"\x0b\x00"])
def test_malformed_bytes_are_a_clear_error(data):
    _, _, reply_class = _messages.METHODS["Recall"]
    with pytest.raises(ValueError, match="malformed reply"):
        _native.decode_reply(reply_class.DESCRIPTOR.full_name, data)


def test_the_client_wraps_an_undecodable_reply_in_its_own_error():
    from memoire.client import _decode
    with pytest.raises(memoire.MemoireError, match="Recall: the reply cannot be decoded"):
        _decode("Recall", b"\x0a\x05ab")

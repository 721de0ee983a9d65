"""HTTP/2 wire constants and encoders: frame headers and stateless HPACK header blocks.

Response header blocks use only static-table references and literals without indexing, without
Huffman coding (RFC 7541 6.1, 6.2.2): they never touch the peer's dynamic table, so the server
needs no HPACK encoder state and can precompute the blocks it sends on every call.
"""

from __future__ import annotations

import enum
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Settings identifiers (RFC 9113 6.5.2).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5

DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384
MAX_FRAME_LIMIT = 16_777_215
MAX_WINDOW = 2**31 - 1
STREAM_ID_MASK = 0x7FFF_FFFF


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB


_HEAD = struct.Struct(">IBI")  # (length << 8 | type), flags, stream id: the 9-byte frame header
U32 = struct.Struct(">I")
SETTING = struct.Struct(">HI")
GOAWAY_HEAD = struct.Struct(">II")


def frame_header(ftype: int, flags: int, stream_id: int, length: int) -> bytes:
    return _HEAD.pack((length << 8) | ftype, flags, stream_id)


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack((len(payload) << 8) | ftype, flags, stream_id) + payload


def settings_payload(settings: dict[int, int]) -> bytes:
    return b"".join(SETTING.pack(key, value) for key, value in settings.items())


def hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 5.1); `first` carries the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def indexed(index: int) -> bytes:
    """A field taken whole from the static table (RFC 7541 6.1)."""
    return hpack_int(index, 7, 0x80)


def literal(name: bytes, value: bytes) -> bytes:
    """A literal field without indexing, with a literal name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def literal_indexed_name(name_index: int, value: bytes) -> bytes:
    """A literal field without indexing whose name is a static-table entry."""
    return hpack_int(name_index, 4) + hpack_int(len(value), 7) + value


STATUS_200 = indexed(8)  # static entry 8 is ":status: 200"
CONTENT_TYPE_INDEX = 31  # static entry 31 is "content-type"


def status_line(code: int) -> bytes:
    """`:status` for any code (static name index 8)."""
    return STATUS_200 if code == 200 else literal_indexed_name(8, str(code).encode())

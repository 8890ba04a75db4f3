"""Kafka record batches built byte by byte for tests, corrupt ones included."""

from __future__ import annotations

import struct

from aiokafka.record.default_records import DefaultRecordBatchBuilder


def record_batch(values: list[bytes], *, base_offset: int = 0, corrupt: bool = False) -> bytes:
    """A v2 record batch of ``values`` as a producer writes it (no compression). ``corrupt``
    flips one bit in the last record's value after the CRC was computed, as a bad disk or
    link would."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    for i, v in enumerate(values):
        b.append(i, timestamp=None, key=None, value=v, headers=[])
    data = bytearray(b.build())
    struct.pack_into(">q", data, 0, base_offset)   # the broker's to set; not under the CRC
    if corrupt:
        data[-5] ^= 0x20   # the last record ends with its value, then a 1-byte header count
    return bytes(data)

#!/usr/bin/env python3
"""Writes a few valid frames (layouts: protocol/src/frame.rs) to seeds/decode_frames/,
the seed corpus of the decode_frames fuzz target.

Run from fuzz/: python3 gen_seeds.py. Each seed is one frame; `stream` is all of them back
to back. Use: cargo fuzz run -s none decode_frames corpus/decode_frames seeds/decode_frames
"""
import os
import struct


def frame(op, rid, payload=b""):
    body = bytes([op]) + struct.pack("<I", rid) + payload
    n, prefix = len(body), b""
    while n >= 0x80:
        prefix += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return prefix + bytes([n]) + body


static_code = bytes([1]) + bytes(range(1, 20))   # 20 bytes, format 1
rotating_code = bytes([2]) + bytes(range(1, 21))  # 21 bytes, format 2

seeds = {
    "req_checkin": frame(0x01, 7, struct.pack("<Q", 9) + static_code),
    "req_exit": frame(0x02, 8, struct.pack("<Q", 10) + rotating_code),
    "req_undo": frame(0x03, 9, struct.pack("<Q", 11) + b"x"),
    "req_status": frame(0x04, 1, static_code),
    "req_mint": frame(0x05, 2, struct.pack("<HHIBBBIQQI", 1, 0, 100, 1, 1, 0, 60, 0, 0, 0)),
    "req_revoke": frame(0x06, 3, rotating_code),
    "req_transfer": frame(0x07, 4, static_code),
    "req_ping": frame(0x08, 5),
    "req_stats": frame(0x09, 6),
    "req_checkin_as": frame(0x0A, 7, struct.pack("<HHQ", 3, 1, 12) + static_code),
    "req_subscribe": frame(0x0B, 8, struct.pack("<Q", 1 << 40)),
    "req_ticket_key": frame(0x0C, 9, rotating_code),
    "req_metrics": frame(0x0D, 10, bytes([0x01])),
    "req_unsubscribe": frame(0x0E, 11, struct.pack("<I", 8)),
    "req_purge": frame(0x0F, 12, struct.pack("<H", 0xFFFF)),
    "req_replica_page": frame(0x10, 13, struct.pack("<BHII", 1, 0, 99, 800)),
    "req_replica_follow": frame(0x11, 14, struct.pack("<Q", 12345)),
    "req_checkin_offline": frame(0x12, 15, struct.pack("<QQQBB", 7, 1_750_000_000_000,
                                                        1_749_999_000, 0, 0) + static_code),
    "req_conflicts": frame(0x13, 16, struct.pack("<BHQ", 1, 1, 0)),
    "resp_outcome": frame(0x81, 7, struct.pack("<BBHQ", 0, 1, 3, 1_750_000_000)),
    "resp_ticket": frame(0x82, 1, struct.pack("<BBBBHHIHBB4Q", 0, 1, 1, 2, 1, 0, 42, 3, 1, 0,
                                              1, 2, 3, 4)),
    "resp_codes": frame(0x83, 2, struct.pack("<H", 2) + bytes([20]) + static_code
                        + bytes([21]) + rotating_code),
    "resp_pong": frame(0x84, 5),
    "resp_stats": frame(0x85, 6, struct.pack("<9QB", *range(1, 10), 1)),
    "resp_events": frame(0x86, 8, struct.pack("<H", 2)
                         + struct.pack("<QBHIBBBHQ", 5, 0, 0, 42, 1, 1, 1, 3, 1_750_000_000)
                         + struct.pack("<QBHIBBBHQ", 6, 1, 1, 43, 0, 0, 0, 0, 1_750_000_001)),
    "resp_ticket_key": frame(0x87, 9, bytes(range(32)) + struct.pack("<I", 30)),
    # Uptime, in flight, 3 outcome counts, latency op, then two histograms (sum, bucket
    # count, (bucket u16, count u64) ascending).
    "resp_metrics": frame(0x88, 10, struct.pack("<QQB3QB", 5_000_000, 2, 3, 10, 2, 1, 0x01)
                          + struct.pack("<QH", 900, 2) + struct.pack("<HQHQ", 40, 2, 100, 1)
                          + struct.pack("<QH", 500, 1) + struct.pack("<HQ", 300, 1)),
    "resp_purged": frame(0x89, 12, struct.pack("<QQ", 1_000_000, 1_048_576)),
    # seq, now, has next, next partition, next serial, count, then items: a policy, a
    # ticket, its rotation key, a state, a retired key, the rotation step.
    "resp_replica": frame(0x8A, 13, struct.pack("<QQBHIH", 77, 1_750_000_000, 1, 0, 42, 6)
                          + bytes([3]) + struct.pack("<IQQIBBB", 4, 0, 1_760_000_000, 86_400,
                                                     1, 0, 3)
                          + bytes([1]) + struct.pack("<QI", 0xDEADBEEF, 4) + struct.pack("<HIBBBHQQ", 0, 42, 1, 1, 1, 3, 1_750_000_000, 1_749_000_000)
                          + bytes([5]) + struct.pack("<HI", 0, 42) + bytes(range(32))
                          + bytes([2]) + struct.pack("<HIBBBHQQ", 0, 42, 1, 1, 1, 3, 1_750_000_000, 1_749_000_000)
                          + bytes([4, 2])
                          + bytes([6]) + struct.pack("<I", 30)),
    # has next, next, count, then a conflict: index, kind, provider, first (gate, time),
    # second (gate, time), code.
    "resp_conflicts": frame(0x8B, 16, struct.pack("<BQH", 0, 0, 1)
                            + struct.pack("<QBHHQHQ", 0, 1, 1, 1, 1_750_000_000, 2,
                                          1_750_000_060)
                            + bytes([20]) + static_code),
    "resp_error": frame(0x8F, 4, struct.pack("<HH", 5, 8) + "conflict".encode()),
}
seeds["resp_error_long"] = frame(0x8F, 4, struct.pack("<HH", 2, 512) + ("é" * 256).encode())
seeds["stream"] = b"".join(seeds.values())

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "decode_frames")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

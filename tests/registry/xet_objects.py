"""Xet objects built in Python for the registry's bad-input tests: chunk and xorb hashes, xorbs and
shards, written from the Xet protocol specification (https://huggingface.co/docs/xet) over the
reference `blake3` package, so a test can hand the registry a valid object and then a corrupted
one. Small inputs only (each chunk is given whole; no content-defined chunking here)."""
from __future__ import annotations

import struct

import blake3

DATA_KEY = bytes([0x66, 0x97, 0xf5, 0x77, 0x5b, 0x95, 0x50, 0xde, 0x31, 0x35, 0xcb, 0xac, 0xa5, 0x97, 0x18, 0x1c,
                  0x9d, 0xe4, 0x21, 0x10, 0x9b, 0xeb, 0x2b, 0x58, 0xb4, 0xd0, 0xb0, 0x4b, 0x93, 0xad, 0xf2, 0x29])
INTERNAL_NODE_KEY = bytes([0x01, 0x7e, 0xc5, 0xc7, 0xa5, 0x47, 0x29, 0x96, 0xfd, 0x94, 0x66, 0x66, 0xb4, 0x8a, 0x02,
                           0xe6, 0x5d, 0xdd, 0x53, 0x6f, 0x37, 0xc7, 0x6d, 0xd2, 0xf8, 0x63, 0x52, 0xe6, 0x4a, 0x53,
                           0x71, 0x3f])
VERIFICATION_KEY = bytes([0x7f, 0x18, 0x57, 0xd6, 0xce, 0x56, 0xed, 0x66, 0x12, 0x7f, 0xf9, 0x13, 0xe7, 0xa5, 0xc3,
                          0xf3, 0xa4, 0xcd, 0x26, 0xd5, 0xb5, 0xdb, 0x49, 0xe6, 0x41, 0x24, 0x98, 0x7f, 0x28, 0xfb,
                          0x94, 0xc3])
SHARD_MAGIC = b"HFRepoMetaData\x00" + bytes([0x55, 0x69, 0x67, 0x45, 0x6a, 0x7b, 0x81, 0x57, 0x83, 0xa5, 0xbd, 0xd9,
                                             0x5c, 0xcd, 0xd1, 0x4a, 0xa9])
BOOKEND = b"\xff" * 32 + b"\x00" * 16


def hash_string(digest: bytes) -> str:
    """The hash string form: four little-endian u64 words, each as 16 hex digits."""
    return "".join(f"{struct.unpack('<Q', digest[i:i + 8])[0]:016x}" for i in range(0, 32, 8))


def chunk_hash(data: bytes) -> bytes:
    return blake3.blake3(data, key=DATA_KEY).digest()


def merkle_root(leaves: list[tuple[bytes, int]]) -> bytes:
    if not leaves:
        return bytes(32)
    nodes = list(leaves)
    while len(nodes) > 1:
        merged, index = [], 0
        while index < len(nodes):
            rest = nodes[index:]
            cut = len(rest)
            if len(rest) > 2:
                cut = min(9, len(rest))
                for position in range(2, min(9, len(rest))):
                    if struct.unpack("<Q", rest[position][0][24:])[0] % 4 == 0:
                        cut = position + 1
                        break
            text = "".join(f"{hash_string(h)} : {s}\n" for h, s in rest[:cut])
            merged.append((blake3.blake3(text.encode(), key=INTERNAL_NODE_KEY).digest(), sum(s for _, s in rest[:cut])))
            index += cut
        nodes = merged
    return nodes[0][0]


def file_hash(chunks: list[bytes]) -> bytes:
    return blake3.blake3(merkle_root([(chunk_hash(c), len(c)) for c in chunks]), key=bytes(32)).digest()


def xorb(chunks: list[bytes]) -> tuple[bytes, bytes]:
    """(xorb hash, serialized xorb) with uncompressed chunks and no footer."""
    body = b""
    for data in chunks:
        size = len(data).to_bytes(3, "little")
        body += b"\x00" + size + b"\x00" + size + data
    return merkle_root([(chunk_hash(c), len(c)) for c in chunks]), body


def shard(files: list[tuple[list[bytes], bytes, bytes]], xorbs: list[tuple[bytes, list[bytes]]]) -> bytes:
    """An upload shard: each file is (its chunks, the xorb hash holding them all, raw sha256); each
    xorb is (hash, chunks)."""
    out = SHARD_MAGIC + struct.pack("<QQ", 2, 0)
    for chunks, xorb_hash, sha256 in files:
        flags = (1 << 31) | (1 << 30)
        out += file_hash(chunks) + struct.pack("<IIQ", flags, 1, 0)
        out += xorb_hash + struct.pack("<IIII", 0, sum(len(c) for c in chunks), 0, len(chunks))
        verification = blake3.blake3(b"".join(chunk_hash(c) for c in chunks), key=VERIFICATION_KEY).digest()
        out += verification + bytes(16)
        # hf_xet writes the sha256 in the hash layout (u64 words), so hash_string(bytes) is its hex.
        words = bytes.fromhex(sha256.hex())
        stored = b"".join(struct.pack("<Q", int(words[i:i + 8].hex(), 16)) for i in range(0, 32, 8))
        out += stored + bytes(16)
    out += BOOKEND
    for xorb_hash, chunks in xorbs:
        total = sum(len(c) for c in chunks)
        out += xorb_hash + struct.pack("<IIII", 0, len(chunks), total, total + 8 * len(chunks))
        start = 0
        for data in chunks:
            out += chunk_hash(data) + struct.pack("<IIII", start, len(data), 0, 0)
            start += len(data)
    out += BOOKEND
    return out

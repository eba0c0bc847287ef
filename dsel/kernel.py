"""Compiled DSIR featurize kernel: hashed word n-gram features over Arrow string batches.

The features are exactly those of :func:`oracle_buckets` (the pure-Python reference, which
matches ``data-selection`` 1.0.3 in ``sha256`` mode): the text is lowercased with Python's
``str.lower()``, tokenized with ``\\w+|[^\\w\\s]+`` under the ``regex`` engine, and every
1..n-gram (tokens joined by one ASCII space, UTF-8 encoded) is hashed into ``num_buckets``.
This is nltk's ``WordPunctTokenizer``: nltk >= 3.10 compiles its pattern with ``regex`` (older
releases used the stdlib ``re``, whose ``\\w``/``\\s`` differ on combining marks, ZWJ/ZWNJ,
superscript digits and \\x1c-\\x1f), and data-selection 1.0.3 calls that tokenizer.

One numba kernel walks the UTF-8 bytes of a whole batch. It decodes code points, classifies them
with a code-point class table, finds tokens and hashes n-grams on the fly, keeping only the last
``n - 1`` token spans and a growable scratch buffer (memory O(batch bytes + longest n-gram)).
ASCII documents are lowercased inside the kernel; non-ASCII documents are lowered in Python
(one ``str.lower()`` call per such document) before the kernel sees them.
"""

from __future__ import annotations

import hashlib
import threading

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from numba import njit

__all__ = ["HASH_KINDS", "score_batch", "count_batch", "features_batch", "score_features", "count_features",
           "oracle_buckets"]

HASH_KINDS = ("murmur3", "sha256")

# nltk WordPunctTokenizer's pattern and flags, under the engine nltk itself uses.
_TOKEN = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)
_MAX_BUCKETS = 1 << 40  # keeps the in-kernel mod arithmetic exact in int64
_M32 = 0xFFFFFFFF


def oracle_buckets(text: str, n: int = 2, num_buckets: int = 10000, seed: int = 0,
                   hash_kind: str = "murmur3") -> list[int]:
    """Reference definition of the features: one bucket per n-gram occurrence (unigrams first)."""
    words = _TOKEN.findall(text.lower())
    grams: list[str] = []
    for i in range(1, n + 1):
        grams += [" ".join(words[j:j + i]) for j in range(len(words) - i + 1)]
    if hash_kind == "murmur3":
        return [mmh3.hash(g, seed, signed=False) % num_buckets for g in grams]
    return [int(hashlib.sha256(g.encode("utf-8")).hexdigest(), 16) % num_buckets for g in grams]


# ---------------------------------------------------------------------------------------------
# Code-point class table: 0 = whitespace (\\s), 1 = word character (\\w), 2 = other, as the
# ``regex`` engine classifies them (both are per-code-point Unicode properties).

_CLASS_TABLE: np.ndarray | None = None
_CLASS_LOCK = threading.Lock()


def _class_table() -> np.ndarray:
    """Build (once per process, ~0.3 s) the uint8 class of every code point 0..0x10FFFF."""
    global _CLASS_TABLE
    if _CLASS_TABLE is None:
        with _CLASS_LOCK:
            if _CLASS_TABLE is None:
                every = "".join(map(chr, range(0x110000)))
                table = np.full(0x110000, 2, dtype=np.uint8)
                for pattern, cls in ((r"\s+", 0), (r"\w+", 1)):
                    for m in regex.finditer(pattern, every):
                        table[m.start():m.end()] = cls
                _CLASS_TABLE = table
    return _CLASS_TABLE


# ---------------------------------------------------------------------------------------------
# Hashes. All arithmetic is int64 masked to 32 bits (int64 multiplication wraps mod 2**64,
# so the low 32 bits of every product are exact).

_SHA_K = np.array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
], dtype=np.int64)
_SHA_H0 = np.array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19], dtype=np.int64)


@njit(cache=True, nogil=True, inline="always")
def _rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & _M32


@njit(cache=True, nogil=True, inline="always")
def _rotr(x, r):
    return ((x >> r) | (x << (32 - r))) & _M32


@njit(cache=True, nogil=True, inline="always")
def _murmur3_32(buf, a, end, seed):
    """MurmurHash3_x86_32 of buf[a:end] (as mmh3.hash(..., signed=False))."""
    c1 = 0xCC9E2D51
    c2 = 0x1B873593
    h = seed
    m = end - a
    nblocks = m >> 2
    for i in range(nblocks):
        p = a + 4 * i
        k = (np.int64(buf[p]) | (np.int64(buf[p + 1]) << 8) | (np.int64(buf[p + 2]) << 16)
             | (np.int64(buf[p + 3]) << 24))
        k = (k * c1) & _M32
        k = _rotl(k, 15)
        k = (k * c2) & _M32
        h ^= k
        h = _rotl(h, 13)
        h = (h * 5 + 0xE6546B64) & _M32
    t = a + 4 * nblocks
    rem = m & 3
    if rem > 0:
        k = np.int64(0)
        if rem >= 3:
            k ^= np.int64(buf[t + 2]) << 16
        if rem >= 2:
            k ^= np.int64(buf[t + 1]) << 8
        k ^= np.int64(buf[t])
        k = (k * c1) & _M32
        k = _rotl(k, 15)
        k = (k * c2) & _M32
        h ^= k
    h ^= m & _M32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


@njit(cache=True, nogil=True)
def _sha256_mod(buf, a, end, num_buckets, w, h, kk, h0):
    """SHA-256 of buf[a:end] taken as a big-endian integer, mod num_buckets.

    Writes the padding into buf[end:end + 72] (the caller guarantees the room); w (64) and h (8)
    are int64 work arrays.
    """
    m = end - a
    padded = ((m + 8) // 64 + 1) * 64
    buf[end] = 0x80
    for i in range(end + 1, a + padded - 8):
        buf[i] = 0
    bits = m * 8
    for i in range(8):
        buf[a + padded - 1 - i] = (bits >> (8 * i)) & 0xFF
    h[:] = h0
    for blk in range(a, a + padded, 64):
        for i in range(16):
            p = blk + 4 * i
            w[i] = ((np.int64(buf[p]) << 24) | (np.int64(buf[p + 1]) << 16)
                    | (np.int64(buf[p + 2]) << 8) | np.int64(buf[p + 3]))
        for i in range(16, 64):
            x = w[i - 15]
            y = w[i - 2]
            s0 = _rotr(x, 7) ^ _rotr(x, 18) ^ (x >> 3)
            s1 = _rotr(y, 17) ^ _rotr(y, 19) ^ (y >> 10)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & _M32
        va, vb, vc, vd, ve, vf, vg, vh = h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]
        for i in range(64):
            S1 = _rotr(ve, 6) ^ _rotr(ve, 11) ^ _rotr(ve, 25)
            ch = (ve & vf) ^ ((~ve) & _M32 & vg)
            t1 = (vh + S1 + ch + kk[i] + w[i]) & _M32
            S0 = _rotr(va, 2) ^ _rotr(va, 13) ^ _rotr(va, 22)
            maj = (va & vb) ^ (va & vc) ^ (vb & vc)
            t2 = (S0 + maj) & _M32
            vh = vg
            vg = vf
            vf = ve
            ve = (vd + t1) & _M32
            vd = vc
            vc = vb
            vb = va
            va = (t1 + t2) & _M32
        h[0] = (h[0] + va) & _M32
        h[1] = (h[1] + vb) & _M32
        h[2] = (h[2] + vc) & _M32
        h[3] = (h[3] + vd) & _M32
        h[4] = (h[4] + ve) & _M32
        h[5] = (h[5] + vf) & _M32
        h[6] = (h[6] + vg) & _M32
        h[7] = (h[7] + vh) & _M32
    r = np.int64(0)
    for i in range(8):
        for sh in range(24, -8, -8):
            r = (r * 256 + ((h[i] >> sh) & 0xFF)) % num_buckets
    return r


# ---------------------------------------------------------------------------------------------
# The batch kernel.

@njit(cache=True, nogil=True)
def _featurize(data0, data1, starts, ends, which, table, n, seed, use_sha, num_buckets, mode,
               lr_t, weights, groups, counts, num_words, num_feats, scratch, first_doc, skip_tok,
               doc_counts, touched, out, out_offsets, memo_key, memo_val, memo_off, memo_arena, memo_used):
    """Featurize documents data{which[d]}[starts[d]:ends[d]] for d >= first_doc.

    mode 0: weights[d, t] += lr_t[bucket, t] for every n-gram occurrence.
    mode 1: counts[groups[d], bucket] += 1.
    mode 2: each document's sparse bucket counts, encoded (see :func:`features_batch`) into
            out[out_offsets[d]:out_offsets[d + 1]]; doc_counts (int64 [B], zero) and touched
            (int64 [B]) are work arrays. If out may not hold the next document, returns
            (d, 0, -bytes needed) before touching it.
    The n-grams ending at the first skip_tok tokens of document first_doc are not emitted again
    (resumption). If an n-gram does not fit in scratch, returns (d, tokens emitted, bytes needed)
    so the caller can grow scratch and resume; returns (-1, 0, 0) when done. (scratch is never
    reallocated in here: a reassigned array in the hot loop costs ~5x in numba.)
    """
    num_t = lr_t.shape[1]
    cap = scratch.shape[0]
    tok_s = np.zeros(n, np.int64)
    tok_e = np.zeros(n, np.int64)
    gram_a = np.zeros(n + 1, np.int64)  # scratch offset where the k-gram suffix starts
    w = np.empty(64, np.int64)
    h = np.empty(8, np.int64)
    kk = _SHA_K
    h0 = _SHA_H0
    for d in range(first_doc, starts.shape[0]):
        data = data0 if which[d] == 0 else data1
        s = starts[d]
        e = ends[d]
        skip = skip_tok if d == first_doc else 0
        nfeat = num_feats[d] if d == first_doc else 0
        ntouched = 0
        if mode == 2 and skip == 0:
            bound = min(num_buckets, n * (e - s + 1)) * 20 + 1
            if out_offsets[d] + bound > out.shape[0]:
                return d, 0, -(out_offsets[d] + bound)
        ntok = 0
        cur = 0
        ts = s
        p = s
        while p <= e:
            ln = 1
            cls = 0
            if p < e:
                b = np.int64(data[p])
                if b < 0x80:
                    cp = b
                elif b < 0xE0 and p + 1 < e:
                    ln = 2
                    cp = ((b & 0x1F) << 6) | (np.int64(data[p + 1]) & 0x3F)
                elif b < 0xF0 and p + 2 < e:
                    ln = 3
                    cp = (((b & 0x0F) << 12) | ((np.int64(data[p + 1]) & 0x3F) << 6)
                          | (np.int64(data[p + 2]) & 0x3F))
                elif p + 3 < e:
                    ln = 4
                    cp = (((b & 0x07) << 18) | ((np.int64(data[p + 1]) & 0x3F) << 12)
                          | ((np.int64(data[p + 2]) & 0x3F) << 6) | (np.int64(data[p + 3]) & 0x3F))
                else:
                    cp = 0x10FFFF + 1  # malformed tail: treat as "other"
                cls = 2 if cp > 0x10FFFF else np.int64(table[cp])
            if cls != cur:
                if cur != 0:
                    # token data[ts:p] ends: slide it into the window of the last n token spans
                    if ntok < n:
                        k_max = ntok + 1
                    else:
                        k_max = n
                        for j in range(n - 1):
                            tok_s[j] = tok_s[j + 1]
                            tok_e[j] = tok_e[j + 1]
                    tok_s[k_max - 1] = ts
                    tok_e[k_max - 1] = p
                    ntok += 1
                    if ntok > skip:
                        # the 1..k_max-grams ending here are suffixes of one joined buffer
                        need = k_max + 72
                        for j in range(k_max):
                            need += tok_e[j] - tok_s[j]
                        if need > cap:
                            num_feats[d] = nfeat
                            return d, ntok - 1, need
                        L = 0
                        for j in range(k_max):
                            if j > 0:
                                scratch[L] = 32
                                L += 1
                            gram_a[k_max - j] = L
                            for q in range(tok_s[j], tok_e[j]):
                                c = np.int64(data[q])
                                if 65 <= c <= 90:
                                    c += 32
                                scratch[L] = c
                                L += 1
                        for k in range(1, k_max + 1):
                            a = gram_a[k]
                            if use_sha:
                                bucket = _sha_cached(scratch, a, L, num_buckets, w, h, kk, h0, memo_key,
                                                     memo_val, memo_off, memo_arena, memo_used)
                            else:
                                bucket = _murmur3_32(scratch, a, L, seed) % num_buckets
                            if mode == 0:
                                for t in range(num_t):
                                    weights[d, t] += lr_t[bucket, t]
                            elif mode == 1:
                                counts[groups[d], bucket] += 1
                            else:
                                if doc_counts[bucket] == 0:
                                    touched[ntouched] = bucket
                                    ntouched += 1
                                doc_counts[bucket] += 1
                            nfeat += 1
                cur = cls
                ts = p
            p += ln
        num_words[d] = ntok
        num_feats[d] = nfeat
        if mode == 2:
            out_offsets[d + 1] = _encode(touched, ntouched, doc_counts, out, out_offsets[d])
    return -1, 0, 0


@njit(cache=True, nogil=True)
def _sha_cached(buf, a, end, num_buckets, w, h, kk, h0, memo_key, memo_val, memo_off, memo_arena, memo_used):
    """_sha256_mod through a memo of the n-grams seen in this batch (exact: a hit compares the bytes).

    memo_key/val/off: open-addressing table (power-of-two size; val -1 = empty) keyed by a 64-bit
    fingerprint (two seeded MurmurHash3); memo_arena holds the n-gram bytes; memo_used[0] is the
    arena fill and memo_used[1] the entry count.  When the table or arena is full, n-grams are just
    hashed without being remembered.
    """
    m = end - a
    fp = _murmur3_32(buf, a, end, 0x9747B28C) | (_murmur3_32(buf, a, end, 0x5BD1E995) << 32)
    mask = memo_key.shape[0] - 1
    slot = fp & mask
    while memo_val[slot] >= 0:
        if memo_key[slot] == fp:
            off = memo_off[slot]
            if memo_arena[off] == (m & 0xFF) and memo_arena[off + 1] == ((m >> 8) & 0xFF):
                same = True
                for i in range(m):
                    if memo_arena[off + 2 + i] != buf[a + i]:
                        same = False
                        break
                if same and m < 65536:
                    return memo_val[slot]
        slot = (slot + 1) & mask
    bucket = _sha256_mod(buf, a, end, num_buckets, w, h, kk, h0)
    used = memo_used[0]
    if m < 65536 and used + m + 2 <= memo_arena.shape[0] and 2 * (memo_used[1] + 1) <= memo_key.shape[0]:
        memo_arena[used] = m & 0xFF
        memo_arena[used + 1] = (m >> 8) & 0xFF
        for i in range(m):
            memo_arena[used + 2 + i] = buf[a + i]
        memo_key[slot] = fp
        memo_val[slot] = bucket
        memo_off[slot] = used
        memo_used[0] = used + m + 2
        memo_used[1] += 1
    return bucket


@njit(cache=True, nogil=True)
def _put_varint(out, pos, value):
    while value >= 0x80:
        out[pos] = (value & 0x7F) | 0x80
        value >>= 7
        pos += 1
    out[pos] = value
    return pos + 1


@njit(cache=True, nogil=True)
def _encode(touched, ntouched, doc_counts, out, pos):
    """Write (bucket, count) varint pairs of one document, in first-seen order; clear its doc_counts.

    Unsorted on purpose: sorting to delta-encode the buckets made features ~30% smaller but
    featurizing ~1.5x slower (measured on the shared corpus)."""
    for i in range(ntouched):
        b = touched[i]
        pos = _put_varint(out, pos, b)
        pos = _put_varint(out, pos, doc_counts[b])
        doc_counts[b] = 0
    return pos


@njit(cache=True, nogil=True, inline="always")
def _get_varint(buf, pos):
    value = 0
    shift = 0
    while True:
        byte = np.int64(buf[pos])
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


@njit(cache=True, nogil=True)
def _decode(buf, offsets, mode, lr_t, weights, groups, counts):
    """mode 0: weights[d, t] = sum of count * lr_t[bucket, t]; mode 1: counts[groups[d], bucket] += count."""
    num_t = lr_t.shape[1]
    for d in range(offsets.shape[0] - 1):
        pos = offsets[d]
        end = offsets[d + 1]
        while pos < end:
            bucket, pos = _get_varint(buf, pos)
            count, pos = _get_varint(buf, pos)
            if mode == 0:
                for t in range(num_t):
                    weights[d, t] += count * lr_t[bucket, t]
            else:
                counts[groups[d], bucket] += count


# ---------------------------------------------------------------------------------------------
# Python wrappers.

_EMPTY = np.frombuffer(b"\0", dtype=np.uint8)  # read-only, like Arrow buffers


def _check(n: int, num_buckets: int, seed: int, hash_kind: str) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if num_buckets < 1 or num_buckets > _MAX_BUCKETS:
        raise ValueError(f"num_buckets must be in [1, 2**40], got {num_buckets!r}")
    if hash_kind not in HASH_KINDS:
        raise ValueError(f"hash_kind must be one of {HASH_KINDS}, got {hash_kind!r}")
    if int(seed) != seed or not 0 <= seed <= _M32:
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")


def _chunks(texts) -> list[pa.Array]:
    if isinstance(texts, pa.ChunkedArray):
        chunks = list(texts.chunks)
        typ = texts.type
    elif isinstance(texts, pa.Array):
        chunks = [texts]
        typ = texts.type
    else:
        raise TypeError("texts must be a pyarrow Array or ChunkedArray, "
                        f"got {type(texts).__name__}")
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise TypeError(f"texts must be of type string or large_string, got {typ}")
    return chunks


def _offsets(arr: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    off = np.frombuffer(arr.buffers()[1], dtype=dtype)
    return off[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)


def _data(buf: pa.Buffer | None) -> np.ndarray:
    if buf is None or buf.size == 0:
        return _EMPTY
    return np.frombuffer(buf, dtype=np.uint8)


def _prepare(arr: pa.Array):
    """(data0, data1, starts, ends, which) for one chunk; non-ASCII docs lowered into data1."""
    num = len(arr)
    if num == 0:
        z = np.zeros(0, np.int64)
        return _EMPTY, _EMPTY, z, z, z
    off = _offsets(arr)
    starts = off[:-1].copy()
    ends = off[1:].copy()
    which = np.zeros(num, np.int64)
    data0 = _data(arr.buffers()[2])
    if arr.null_count:
        null = arr.is_null().to_numpy(zero_copy_only=False)
        ends[null] = starts[null]
    ascii_ = pc.fill_null(pc.string_is_ascii(arr), True)
    data1 = data0
    if not pc.all(ascii_).as_py():
        mask = pc.invert(ascii_)
        lowered = pa.array([s.lower() for s in arr.filter(mask).to_pylist()], pa.large_string())
        idx = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        off1 = _offsets(lowered)
        starts[idx] = off1[:-1]
        ends[idx] = off1[1:]
        which[idx] = 1
        data1 = _data(lowered.buffers()[2])
    return data0, data1, starts, ends, which


_MEMOS: dict = {}
_MEMO_SLOTS, _MEMO_BYTES = 1 << 21, 64 << 20


def _sha_memo(num_buckets: int):
    """The sha256 mode's memo of distinct n-grams -> bucket, kept for the life of the process
    (a Spark Python worker reuses it across batches and tasks), one per num_buckets; 0 gives a
    dummy.  It stops growing when full (~2M n-grams, 64 MB), by which time it holds the frequent ones."""
    if num_buckets == 0:
        return (np.zeros(1, np.int64), np.full(1, -1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.uint8),
                np.zeros(2, np.int64))
    if num_buckets not in _MEMOS:
        _MEMOS.clear()
        _MEMOS[num_buckets] = (np.zeros(_MEMO_SLOTS, np.int64), np.full(_MEMO_SLOTS, -1, np.int64),
                               np.zeros(_MEMO_SLOTS, np.int64), np.zeros(_MEMO_BYTES, np.uint8), np.zeros(2, np.int64))
    return _MEMOS[num_buckets]


def _run(texts, n, seed, hash_kind, num_buckets, mode, lr_t, weights, groups, counts):
    chunks = _chunks(texts)
    total = sum(len(c) for c in chunks)
    num_words = np.zeros(total, np.int64)
    num_feats = np.zeros(total, np.int64)
    table = _class_table()
    scratch = np.empty(4096, np.uint8)  # holds one n-gram (+ SHA-256 padding); grown on demand
    work = num_buckets if mode == 2 else 1
    doc_counts, touched = np.zeros(work, np.int64), np.zeros(work, np.int64)
    memo_key, memo_val, memo_off, memo_arena, memo_used = _sha_memo(num_buckets if hash_kind == "sha256" else 0)
    encoded = []
    row = 0
    for chunk in chunks:
        data0, data1, starts, ends, which = _prepare(chunk)
        r1 = row + len(chunk)
        w_slice = weights[row:r1] if mode == 0 else weights
        g_slice = groups[row:r1] if mode == 1 else groups
        out = np.empty(1 << 16 if mode == 2 else 1, np.uint8)
        out_offsets = np.zeros(len(chunk) + 1, np.int64)
        doc, skip = 0, 0
        while True:
            doc, skip, need = _featurize(
                data0, data1, starts, ends, which, table, int(n), int(seed), hash_kind == "sha256",
                int(num_buckets), mode, lr_t, w_slice, g_slice, counts, num_words[row:r1],
                num_feats[row:r1], scratch, doc, skip, doc_counts, touched, out, out_offsets, memo_key, memo_val,
                memo_off, memo_arena, memo_used)
            if doc < 0:
                break
            if need < 0:  # the encoded output needs room for the next document: grow and resume
                grown = np.empty(max(-need, 2 * out.shape[0]), np.uint8)
                grown[:out.shape[0]] = out
                out = grown
            else:
                scratch = np.empty(max(need, 2 * scratch.shape[0]), np.uint8)  # grow and resume
        if mode == 2:
            encoded.append((out, out_offsets))
        row = r1
    return num_words, num_feats, encoded


def score_batch(texts, log_ratios: np.ndarray, n: int = 2, seed: int = 0,
                hash_kind: str = "murmur3") -> tuple[np.ndarray, np.ndarray]:
    """Log importance weights of each document for each target.

    log_ratios: float64 [T, B] (B = num_buckets). Returns (weights float64 [N, T], num_words
    int64 [N]); weights[i, t] = sum of log_ratios[t, bucket] over document i's n-gram occurrences.
    Null documents get weight 0 and num_words 0.
    """
    log_ratios = np.asarray(log_ratios, dtype=np.float64)
    if log_ratios.ndim != 2:
        raise ValueError(f"log_ratios must be 2-D [T, B], got shape {log_ratios.shape}")
    num_t, num_buckets = log_ratios.shape
    _check(n, num_buckets, seed, hash_kind)
    lr_t = np.ascontiguousarray(log_ratios.T)
    total = len(texts)
    weights = np.zeros((total, num_t), np.float64)
    dummy_groups = np.zeros(1, np.int64)
    dummy_counts = np.zeros((1, 1), np.int64)
    num_words, _, _ = _run(texts, n, seed, hash_kind, num_buckets, 0, lr_t, weights, dummy_groups,
                           dummy_counts)
    return weights, num_words


def count_batch(texts, groups: np.ndarray, counts: np.ndarray, n: int = 2, seed: int = 0,
                hash_kind: str = "murmur3") -> tuple[np.ndarray, np.ndarray]:
    """Add each document's n-gram bucket counts into counts[groups[i], :] in place.

    counts: int64 [G, B] (C-contiguous, modified in place); groups: int64 [N] in [0, G).
    Returns (num_features int64 [N] = n-gram occurrences per doc, num_words int64 [N]).
    """
    if not (isinstance(counts, np.ndarray) and counts.dtype == np.int64 and counts.ndim == 2
            and counts.flags.c_contiguous and counts.flags.writeable):
        raise ValueError("counts must be a writeable C-contiguous int64 array of shape [G, B]")
    num_g, num_buckets = counts.shape
    _check(n, num_buckets, seed, hash_kind)
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    if groups.shape != (len(texts),):
        raise ValueError(f"groups must have shape ({len(texts)},), got {groups.shape}")
    if groups.size and (groups.min() < 0 or groups.max() >= num_g):
        raise ValueError(f"groups must be in [0, {num_g})")
    dummy_lr = np.zeros((1, 1), np.float64)
    dummy_w = np.zeros((1, 1), np.float64)
    num_words, num_feats, _ = _run(texts, n, seed, hash_kind, num_buckets, 1, dummy_lr, dummy_w,
                                   groups, counts)
    return num_feats, num_words


def features_batch(texts, num_buckets: int, n: int = 2, seed: int = 0,
                   hash_kind: str = "murmur3") -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Each document's sparse hashed n-gram counts, encoded once so that fit and score need no text.

    Returns (features: pa.LargeBinaryArray [N], num_features int64 [N], num_words int64 [N]).  A
    document's bytes are its distinct buckets, in the order they first occur, as unsigned LEB128
    varint pairs (bucket, count); null documents get empty features.  Use
    :func:`score_features` and :func:`count_features` on them.
    """
    _check(n, num_buckets, seed, hash_kind)
    dummy = np.zeros((1, 1))
    num_words, num_feats, encoded = _run(texts, n, seed, hash_kind, num_buckets, 2, dummy, dummy,
                                         np.zeros(1, np.int64), np.zeros((1, 1), np.int64))
    arrays = [pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(off) - 1,
                                               [None, pa.py_buffer(off), pa.py_buffer(out[:off[-1]].copy())])
              for out, off in encoded]
    merged = pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_binary())
    return merged, num_feats, num_words


def _binary_parts(features) -> list[tuple[np.ndarray, np.ndarray]]:
    chunks = features.chunks if isinstance(features, pa.ChunkedArray) else [features]
    parts = []
    for chunk in chunks:
        if not (pa.types.is_binary(chunk.type) or pa.types.is_large_binary(chunk.type)):
            raise TypeError(f"features must be binary or large_binary, got {chunk.type}")
        off = _offsets_any(chunk)
        parts.append((_data(chunk.buffers()[2]), off))
    return parts


def _offsets_any(arr: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_binary(arr.type) else np.int32
    if arr.null_count:
        raise ValueError("features must not contain nulls; unusable documents have empty features")
    return np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset: arr.offset + len(arr) + 1].astype(np.int64)


def score_features(features, log_ratios: np.ndarray) -> np.ndarray:
    """Log weights [N, T] from encoded features: sum over buckets of count * log_ratios[t, bucket]."""
    lr_t = np.ascontiguousarray(np.asarray(log_ratios, dtype=np.float64).T)
    weights = np.zeros((len(features), lr_t.shape[1]), np.float64)
    row = 0
    for data, off in _binary_parts(features):
        rows = len(off) - 1
        _decode(data, off, 0, lr_t, weights[row:row + rows], np.zeros(1, np.int64), np.zeros((1, 1), np.int64))
        row += rows
    return weights


def count_features(features, groups: np.ndarray, counts: np.ndarray) -> None:
    """Add encoded features into counts[groups[i], :] in place (counts int64 [G, B])."""
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    row = 0
    for data, off in _binary_parts(features):
        rows = len(off) - 1
        _decode(data, off, 1, np.zeros((1, 1)), np.zeros((1, 1)), groups[row:row + rows], counts)
        row += rows

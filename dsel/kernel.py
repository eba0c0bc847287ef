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
ASCII documents are lowercased inside the kernel; non-ASCII documents are lowered before the kernel
sees them, with ``pc.utf8_lower`` except the few whose code points it lowers unlike ``str.lower()``.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import types

import mmh3
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex
from numba import njit

from dsel.stopwords import ENGLISH as STOPWORDS

__all__ = ["HASH_KINDS", "score_batch", "count_batch", "features_batch", "score_features", "count_features",
           "NgramSample", "oracle_buckets", "oracle_bucket", "oracle_ngrams", "oracle_stats", "sample_key"]

HASH_KINDS = ("murmur3", "sha256")

# nltk WordPunctTokenizer's pattern and flags, under the engine nltk itself uses.
_TOKEN = regex.compile(r"\w+|[^\w\s]+", regex.UNICODE | regex.MULTILINE | regex.DOTALL)
_WORD = regex.compile(r"\w", regex.UNICODE)
_DIGITS = regex.compile(r"\d+", regex.UNICODE)
_STOP = frozenset(STOPWORDS)
_MAX_BUCKETS = 1 << 40  # keeps the in-kernel mod arithmetic exact in int64
_M32 = 0xFFFFFFFF
_TOKEN_SLOTS = 1024  # initial slots of the per-document token table (quality statistics)
_KEY_STEP = 0x9E3779B1  # the n-gram sample's key seed moves by this per token position


def oracle_ngrams(text: str, n: int = 2) -> list[tuple[str, int]]:
    """Reference n-grams: (n-gram, index of its last token), unigrams first, then bigrams, ..."""
    words = _TOKEN.findall(text.lower())
    return [(" ".join(words[j:j + i]), j + i - 1) for i in range(1, n + 1) for j in range(len(words) - i + 1)]


def oracle_bucket(gram: str, num_buckets: int = 10000, seed: int = 0, hash_kind: str = "murmur3") -> int:
    """Reference bucket of one n-gram string."""
    if hash_kind == "murmur3":
        return mmh3.hash(gram, seed, signed=False) % num_buckets
    return int(hashlib.sha256(gram.encode("utf-8")).hexdigest(), 16) % num_buckets


def oracle_buckets(text: str, n: int = 2, num_buckets: int = 10000, seed: int = 0,
                   hash_kind: str = "murmur3") -> list[int]:
    """Reference definition of the features: one bucket per n-gram occurrence (unigrams first)."""
    return [oracle_bucket(g, num_buckets, seed, hash_kind) for g, _ in oracle_ngrams(text, n)]


def oracle_stats(text: str) -> tuple[int, int, int, int]:
    """Reference quality statistics: (num_words, top_word_count, informative_words, numeric_words).

    Over the tokens of :func:`oracle_ngrams`: the count of the most frequent token; the tokens that
    are words (``\\w+``) and not in :data:`dsel.stopwords.ENGLISH` (so neither stopwords nor
    punctuation, which are the ``[^\\w\\s]+`` tokens); the tokens made only of decimal digits (``\\d+``).
    """
    words = _TOKEN.findall(text.lower())
    top = max(collections.Counter(words).values(), default=0)
    informative = sum(1 for w in words if _WORD.match(w) and w not in _STOP)
    numeric = sum(1 for w in words if _DIGITS.fullmatch(w))
    return len(words), top, informative, numeric


# ---------------------------------------------------------------------------------------------
# Code-point class table: 0 = whitespace (\\s), 1 = word character (\\w), 2 = other, as the
# ``regex`` engine classifies them (both are per-code-point Unicode properties); bit 4 is set on
# the decimal digits (\\d, also word characters), for the numeric-word statistic.

_CLASS_TABLE: np.ndarray | None = None
_DIGIT = 4
_CLASS_LOCK = threading.Lock()


def _class_table() -> np.ndarray:
    """Build (once per process, ~0.3 s) the uint8 class of every code point 0..0x10FFFF."""
    global _CLASS_TABLE
    if _CLASS_TABLE is None:
        with _CLASS_LOCK:
            if _CLASS_TABLE is None:
                every = "".join(map(chr, range(0x110000)))
                table = np.full(0x110000, 2, dtype=np.uint8)
                for pattern, cls in ((r"\s+", 0), (r"\w+", 1), (r"\d+", 1 | _DIGIT)):
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
    for i in range(8):
        h[i] = h0[i]
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

# The kernel's flags are compile-time constants: _featurize is compiled once per combination of
# mode, hash, statistics and sample (see :func:`_kernel`), with these globals bound to it, so that
# numba and LLVM drop the other modes' branches from the hot loop (~8% faster than one generic loop).
_F_MODE, _F_SHA, _F_STATS, _F_SAMPLE = 2, False, False, False


def _featurize(data0, data1, starts, ends, which, table, n, seed, num_buckets,
               lr_t, weights, groups, counts, num_words, num_feats, scratch, first_doc, skip_tok,
               doc_counts, touched, out, out_offsets, memo_key, memo_val, memo_off, memo_arena, memo_used,
               stats, state, tt, tt_slots, tt_rows, sw, sw_arena,
               sample_k, doc_seeds, smp, smp_arena, smp_used, smp_limit, work):
    """Featurize documents data{which[d]}[starts[d]:ends[d]] for d >= first_doc.

    Call it through :func:`_kernel`: the mode, the hash (use_sha), want_stats and whether to sample
    (sample_k > 0) are the variant's constants _F_MODE, _F_SHA, _F_STATS and _F_SAMPLE.
    mode 0: weights[d, t] += lr_t[bucket, t] for every n-gram occurrence.
    mode 1: counts[groups[d], bucket] += 1.
    mode 2: each document's sparse bucket counts, encoded (see :func:`features_batch`) into
            out[out_offsets[d]:out_offsets[d + 1]]; doc_counts (int64 [B], zero) and touched
            (int64 [B + 1]: one spare slot for the branch-free append) are work arrays.
    want_stats: stats[d] = (top_word_count, informative_words, numeric_words) (see :func:`oracle_stats`),
            from a per-document token table tt (int64 [2^j, 4], see the comment where it is filled;
            tt_slots lists its used slots, tt_rows is work space to rehash it) and the stopword table
            sw / sw_arena (see :func:`_stopword_table`),
            both keyed by the token's MurmurHash3 with ``seed`` (in murmur3 mode, the unigram's own hash).
    sample_k > 0: every n-gram occurrence is offered to the bottom-k sample smp / smp_arena / smp_used
            (see :class:`NgramSample`), with the key seeded by doc_seeds[d] and the token position,
            when its key is at most its bucket's smp_limit (the largest kept key of a full bucket).
    state (int64 [6]) carries a document's running values (touched buckets, distinct tokens, top
    count, informative and numeric words, token-table mask) across a resumption.

    The n-grams ending at the first skip_tok tokens of document first_doc are not emitted again
    (resumption). Returns (d, tokens emitted, size needed, what) when a buffer must grow before
    document d can go on, what being 1 (scratch: an n-gram does not fit), 2 (out may not hold the
    next document), 3 (the token table is half full) or 4 (the sample arena); the caller grows it and
    resumes. Returns (-1, 0, 0, 0) when done. (No array is reallocated in here: a reassigned array in
    the hot loop costs ~5x in numba.)  work (int64 [n + 72]) holds the token window and the SHA-256
    work arrays: the kernel is compiled without numba's reference counting (``_nrt=False``, see
    :func:`_kernel`), so it allocates nothing, and passing an array to an inlined helper (the hashes)
    costs no atomic incref/decref pair.
    """
    num_t = lr_t.shape[1]
    cap = scratch.shape[0]
    tok_s = work[0:n]
    w = work[n:n + 64]
    h = work[n + 64:n + 72]
    kk = _SHA_K
    h0 = _SHA_H0
    for d in range(first_doc, starts.shape[0]):
        data = data0 if which[d] == 0 else data1
        s = starts[d]
        e = ends[d]
        skip = skip_tok if d == first_doc else 0
        nfeat = num_feats[d] if d == first_doc else 0
        if skip == 0:
            ntouched = 0
            if _F_STATS:
                for i in range(state[1]):
                    tt[tt_slots[i], 2] = 0
                state[1:] = 0
                state[5] = min(tt.shape[0], _TOKEN_SLOTS) - 1  # a small table per document stays in cache
        else:
            ntouched = state[0]
        if _F_MODE == 2 and skip == 0:
            bound = min(num_buckets, n * (e - s + 1)) * 20 + 1
            if out_offsets[d] + bound > out.shape[0]:
                return d, 0, out_offsets[d] + bound, 2
        ntok = 0
        L = 0
        cur = 0
        ts = s
        tdig = 0
        p = s
        while p <= e:
            ln = 1
            cls = 0
            dig = 0
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
                if cp > 0x10FFFF:
                    cls = 2
                else:
                    v = np.int64(table[cp])
                    cls = v & 3
                    dig = v & _DIGIT
            if cls != cur:
                if cur != 0:
                    # token data[ts:p] ends: append it, lowercased, to the document's tokens joined by
                    # spaces in scratch[:L]; tok_s holds the scratch offsets of the last n tokens, so
                    # the 1..n-grams ending here are suffixes scratch[tok_s[j]:L] (each token copied once)
                    tl = p - ts
                    if ntok < n:
                        k_max = ntok + 1
                    else:
                        k_max = n
                        for j in range(n - 1):
                            tok_s[j] = tok_s[j + 1]
                    if k_max == 1:
                        L = 0
                    elif L + tl + 73 > cap:  # scratch is full: move the window's tokens to its front
                        base = tok_s[0]
                        for i in range(base, L):
                            scratch[i - base] = scratch[i]
                        for j in range(k_max - 1):
                            tok_s[j] -= base
                        L -= base
                    if L + tl + 73 > cap:  # (the SHA-256 padding needs 72 bytes past the n-gram)
                        num_feats[d] = nfeat
                        state[0] = ntouched
                        return d, max(ntok, skip), L + tl + 73, 1
                    if k_max > 1:
                        scratch[L] = 32
                        L += 1
                    tok_s[k_max - 1] = L
                    for q in range(ts, p):
                        c = np.int64(data[q])
                        if 65 <= c <= 90:
                            c += 32
                        scratch[L] = c
                        L += 1
                    ntok += 1
                    if ntok > skip:
                        need = L - tok_s[0] + 73
                        grow = 0
                        if _F_STATS and 2 * (state[1] + 1) > state[5] + 1:
                            if 2 * (state[5] + 1) <= tt.shape[0]:
                                _rehash_tokens(tt, tt_slots, state, 2 * state[5] + 1, tt_rows)
                            else:
                                grow, need = 3, 2 * tt.shape[0]
                        elif _F_SAMPLE and smp_used[0] + k_max * need > smp_arena.shape[0]:
                            grow, need = 4, k_max * need
                        if grow:
                            num_feats[d] = nfeat
                            state[0] = ntouched
                            return d, ntok - 1, need, grow
                        key_seed = (doc_seeds[d] + (ntok - 1) * _KEY_STEP) & _M32 if _F_SAMPLE else 0
                        token_hash = 0
                        for k in range(1, k_max + 1):
                            a = tok_s[k_max - k]
                            if _F_SHA:
                                bucket = _sha_cached(scratch, a, L, num_buckets, w, h, kk, h0, memo_key,
                                                     memo_val, memo_off, memo_arena, memo_used)
                            else:
                                hv = _murmur3_32(scratch, a, L, seed)
                                if k == 1:
                                    token_hash = hv
                                bucket = hv % num_buckets
                            if _F_MODE == 0:
                                for t in range(num_t):
                                    weights[d, t] += lr_t[bucket, t]
                            elif _F_MODE == 1:
                                counts[groups[d], bucket] += 1
                            else:
                                # branch-free: a new bucket (count 0) is appended to touched
                                c = doc_counts[bucket]
                                touched[ntouched] = bucket
                                ntouched += c == 0
                                doc_counts[bucket] = c + 1
                            if _F_SAMPLE:
                                key = _murmur3_32(scratch, a, L, key_seed)
                                if key <= smp_limit[bucket]:
                                    _sample_offer(smp, smp_arena, smp_used, smp_limit, sample_k, bucket, key,
                                                  scratch, a, L)
                            nfeat += 1
                        if _F_STATS:
                            # Count the token scratch[ta:L] in the document's token table tt: open
                            # addressing, rows (hash | length << 32, start in data, count, informative),
                            # compared byte for byte, so the counts are exact.  (Written out here: as a
                            # function, inlined or not, numba's reference counting of its array
                            # arguments made featurize ~2x slower.)
                            if _F_SHA:
                                token_hash = _murmur3_32(scratch, tok_s[k_max - 1], L, seed)
                            ta = tok_s[k_max - 1]
                            m = L - ta
                            tkey = token_hash | (m << 32)
                            tmask = state[5]
                            slot = token_hash & tmask
                            while tt[slot, 2] != 0:
                                if tt[slot, 0] == tkey:
                                    off = tt[slot, 1]
                                    same = True
                                    for i in range(m):
                                        c = np.int64(data[off + i])
                                        if 65 <= c <= 90:
                                            c += 32
                                        if c != scratch[ta + i]:
                                            same = False
                                            break
                                    if same:
                                        break
                                slot = (slot + 1) & tmask
                            if tt[slot, 2] == 0:
                                tt[slot, 0] = tkey
                                tt[slot, 1] = ts
                                tt[slot, 3] = 1 if _informative(scratch, ta, m, token_hash, cur == 1, sw, sw_arena) else 0
                                tt_slots[state[1]] = slot
                                state[1] += 1
                            count = tt[slot, 2] + 1
                            tt[slot, 2] = count
                            if count > state[2]:
                                state[2] = count
                            state[3] += tt[slot, 3]
                            if tdig != 0:
                                state[4] += 1
                cur = cls
                ts = p
                tdig = dig
            elif dig == 0:
                tdig = 0
            p += ln
        num_words[d] = ntok
        num_feats[d] = nfeat
        if _F_STATS:
            stats[d, 0] = state[2]
            stats[d, 1] = state[3]
            stats[d, 2] = state[4]
        if _F_MODE == 2:
            out_offsets[d + 1] = _encode(touched, ntouched, doc_counts, out, out_offsets[d])
    return -1, 0, 0, 0


_KERNELS: dict = {}
_KERNEL_LOCK = threading.Lock()


def _kernel(mode: int, use_sha: bool, want_stats: bool, sample: bool):
    """The compiled :func:`_featurize` for these flags (compiled, or loaded from numba's cache, once)."""
    key = (int(mode), bool(use_sha), bool(want_stats), bool(sample))
    kernel = _KERNELS.get(key)
    if kernel is None:
        with _KERNEL_LOCK:
            kernel = _KERNELS.get(key)
            if kernel is None:
                bound = dict(globals(), _F_MODE=key[0], _F_SHA=key[1], _F_STATS=key[2], _F_SAMPLE=key[3])
                func = types.FunctionType(_featurize.__code__, bound, "_featurize")
                func.__qualname__ = "_featurize_m%d%s%s%s" % (key[0], "_sha" if key[1] else "", "_stats" if key[2]
                                                               else "", "_sample" if key[3] else "")
                func.__doc__ = _featurize.__doc__
                kernel = _KERNELS[key] = njit(cache=True, nogil=True, _nrt=False)(func)
    return kernel


@njit(cache=True, nogil=True)
def _compare(buf1, a1, m1, buf2, a2, m2):
    """-1, 0 or 1 as buf1[a1:a1 + m1] is bytewise less than, equal to or greater than buf2[a2:a2 + m2]."""
    for i in range(min(m1, m2)):
        if buf1[a1 + i] != buf2[a2 + i]:
            return -1 if buf1[a1 + i] < buf2[a2 + i] else 1
    return 0 if m1 == m2 else (-1 if m1 < m2 else 1)


@njit(cache=True, nogil=True)
def _informative(scratch, a, m, hv, word, sw, sw_arena):
    """Whether the token scratch[a:a + m] (hash hv) is informative: a word and not a stopword."""
    if not word:
        return False
    if m > _MAX_STOPWORD:
        return True
    probe = hv & (sw.shape[0] - 1)
    while sw[probe, 2] != 0:
        if sw[probe, 0] == hv and _compare(sw_arena, sw[probe, 1], sw[probe, 2], scratch, a, m) == 0:
            return False
        probe = (probe + 1) & (sw.shape[0] - 1)
    return True


@njit(cache=True, nogil=True)
def _rehash_tokens(tt, tt_slots, state, mask, rows):
    """Re-place the document's tokens in the first mask + 1 slots of tt (mask + 1 <= len(tt));
    rows (int64 [len(tt_slots), 4]) is work space."""
    used = state[1]
    for i in range(used):
        for j in range(4):
            rows[i, j] = tt[tt_slots[i], j]
        tt[tt_slots[i], 2] = 0
    for i in range(used):
        slot = rows[i, 0] & _M32 & mask
        while tt[slot, 2] != 0:
            slot = (slot + 1) & mask
        for j in range(4):
            tt[slot, j] = rows[i, j]
        tt_slots[i] = slot
    state[5] = mask


@njit(cache=True, nogil=True)
def _sample_offer(smp, arena, used, limit, k, bucket, key, scratch, a, end):
    """Offer one n-gram occurrence (scratch[a:end], key) to its bucket's bottom-k (see NgramSample)."""
    m = end - a
    base = bucket * k
    slot = -1
    for i in range(base, base + k):
        if smp[2, i] == m and _compare(arena, smp[1, i], m, scratch, a, m) == 0:
            if key >= smp[0, i]:
                return
            slot = i  # kept already: lower its key
            break
    if slot < 0:
        for i in range(base, base + k):
            if smp[2, i] < 0:
                slot = i
                break
            if slot < 0 or _later(smp, arena, i, slot):
                slot = i
        if smp[2, slot] >= 0 and (key > smp[0, slot] or (
                key == smp[0, slot] and _compare(scratch, a, m, arena, smp[1, slot], smp[2, slot]) > 0)):
            return
        off = used[0]
        for i in range(m):
            arena[off + i] = scratch[a + i]
        used[0] = off + m
        smp[1, slot] = off
        smp[2, slot] = m
    smp[0, slot] = key
    worst = -1
    for i in range(base, base + k):
        if smp[2, i] < 0:
            return  # a free slot: every key is still welcome
        if worst < 0 or smp[0, i] > smp[0, worst]:
            worst = i
    limit[bucket] = smp[0, worst]


@njit(cache=True, nogil=True)
def _later(smp, arena, i, j):
    """Whether kept n-gram i sorts after kept n-gram j by (key, bytes)."""
    if smp[0, i] != smp[0, j]:
        return smp[0, i] > smp[0, j]
    return _compare(arena, smp[1, i], smp[2, i], arena, smp[1, j], smp[2, j]) > 0


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
def _decode(buf, offsets, mode, lr_t, weights, groups, counts, order):
    """mode 0: weights[d, t] = sum of count * lr_t[bucket, t]; mode 1: counts[groups[d], bucket] += count.
    The documents are taken in ``order`` (their indexes) when it is not empty."""
    num_t = lr_t.shape[1]
    for i in range(offsets.shape[0] - 1):
        d = order[i] if order.shape[0] else i
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
_NONE = np.zeros(0, np.int64)


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


_LOWER_SPECIAL: np.ndarray | None = None
_LOWER_LOCK = threading.Lock()


def _lower_special() -> np.ndarray:
    """Build (once per process, ~0.05 s) the bool table of the code points whose ``pc.utf8_lower``
    (utf8proc's simple case mapping, its Unicode version) differs from ``str.lower()`` (full case
    mapping, e.g. U+0130 -> 'i\\u0307', Python's Unicode version), and U+03A3 (final sigma)."""
    global _LOWER_SPECIAL
    if _LOWER_SPECIAL is None:
        with _LOWER_LOCK:
            if _LOWER_SPECIAL is None:
                cps = np.r_[1:0xD800, 0xE000:0x110000].astype(np.uint32)  # NUL terminates each one
                text = np.stack([cps, np.zeros_like(cps)], 1).tobytes().decode("utf-32-le")
                arrow = pc.utf8_lower(pa.scalar(text, pa.large_string())).as_buffer()
                diff = pc.not_equal(_nul_split(arrow), _nul_split(text.lower().encode("utf-8")))
                table = np.zeros(1 << 21, np.bool_)
                table[cps[diff.to_numpy(zero_copy_only=False)]] = True
                table[0x3A3] = True
                _LOWER_SPECIAL = table
    return _LOWER_SPECIAL


def _nul_split(data: bytes | pa.Buffer) -> pa.Array:
    """The NUL-terminated pieces of UTF-8 ``data`` (bytes or a buffer) as a large_string array."""
    buf = np.frombuffer(data, np.uint8)
    offsets = np.r_[0, np.flatnonzero(buf == 0) + 1].astype(np.int64)
    return pa.LargeStringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(buf))


@njit(cache=True, nogil=True)
def _has_special(data, starts, ends, special):
    """Whether each document data[starts[i]:ends[i]] holds a code point flagged in ``special``."""
    out = np.zeros(len(starts), np.bool_)
    for i in range(len(starts)):
        p = starts[i]
        e = ends[i]
        while p < e:
            b = np.int64(data[p])
            if b < 0xC0:  # ASCII or a continuation byte
                p += 1
                continue
            ln = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            if p + ln > e:
                break
            cp = b & (0x7F >> ln)
            for k in range(1, ln):
                cp = (cp << 6) | (np.int64(data[p + k]) & 0x3F)
            if special[cp]:
                out[i] = True
                break
            p += ln
    return out


def _utf8(arr: pa.Array) -> pa.Array:
    """``arr`` (large_string) with each string that is not valid UTF-8 (a Parquet or Delta input can hold
    such bytes; Spark's JSON reader makes their lines malformed) read as ``bytes.decode("utf-8",
    "replace")`` reads it: U+FFFD for each invalid sequence, as Spark shows such strings to Python."""
    try:
        arr.validate(full=True)
        return arr
    except pa.ArrowInvalid:
        values = arr.cast(pa.large_binary()).to_pylist()
        return pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], pa.large_string())


def _lower(arr: pa.Array) -> pa.Array:
    """``[s.lower() for s in arr]`` of non-null strings, as large_string: ``pc.utf8_lower``, except
    the documents holding a code point of :func:`_lower_special`, which ``str.lower()`` lowers.
    Strings that are not valid UTF-8 are first read as :func:`_utf8` reads them."""
    arr = _utf8(arr.cast(pa.large_string()))
    off = _offsets(arr)
    odd = _has_special(_data(arr.buffers()[2]), off[:-1], off[1:], _lower_special())
    lowered = pc.utf8_lower(arr)
    if odd.any():
        fix = pa.array([s.lower() for s in arr.filter(odd).to_pylist()], pa.large_string())
        lowered = pc.replace_with_mask(lowered, pa.array(odd), fix)
    return lowered


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
        lowered = _lower(arr.filter(mask))
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


_STOPWORD_TABLES: dict = {}
_MAX_STOPWORD = max(len(w.encode("utf-8")) for w in STOPWORDS)


def _stopword_table(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stopwords as an open-addressing table for the kernel, keyed by MurmurHash3 with ``seed``:
    (int64 [S, 3] rows of hash, offset, length; their bytes)."""
    if seed not in _STOPWORD_TABLES:
        words = [w.encode("utf-8") for w in STOPWORDS]
        size = 1 << (2 * len(words) - 1).bit_length()
        table = np.zeros((size, 3), np.int64)
        offset = 0
        for word in words:
            hv = mmh3.hash(word, seed, signed=False)
            slot = hv & (size - 1)
            while table[slot, 2]:
                slot = (slot + 1) & (size - 1)
            table[slot] = (hv, offset, len(word))
            offset += len(word)
        _STOPWORD_TABLES[seed] = (table, np.frombuffer(b"".join(words), np.uint8))
    return _STOPWORD_TABLES[seed]


def sample_key(gram: str, doc_hash: int, position: int) -> int:
    """The sampling key of one n-gram occurrence (see :class:`NgramSample`), as the kernel computes it.

    ``doc_hash``: the document's 64-bit content hash (``_dsel_hash``); ``position``: the index of the
    n-gram's last token in the document.
    """
    return mmh3.hash(gram, (_doc_seed(doc_hash) + position * _KEY_STEP) & _M32, signed=False)


def _doc_seed(doc_hash):
    """32 bits of a 64-bit document hash (an int, or an int64 array)."""
    if isinstance(doc_hash, np.ndarray):
        u = doc_hash.astype(np.int64).view(np.uint64)
        return ((u ^ (u >> np.uint64(32))) & np.uint64(_M32)).astype(np.int64)
    u = int(doc_hash) & 0xFFFFFFFFFFFFFFFF
    return (u ^ (u >> 32)) & _M32


class NgramSample:
    """A bottom-k sample of the distinct n-grams of each bucket, filled by :func:`count_batch`.

    Every n-gram occurrence gets a key, ``murmur3_32(n-gram, seed=(doc_seed + position * 0x9E3779B1)
    mod 2^32)`` (:func:`sample_key`), a pure function of the document's content hash, the position of the
    n-gram's last token and the n-gram.  An n-gram's key is the smallest key of its occurrences, and each
    bucket keeps the ``k`` n-grams with the smallest (key, UTF-8 bytes).  So an n-gram that occurs c times
    is c times as likely to come first as one that occurs once (a frequency-weighted sample without
    replacement), and the sample is mergeable: the bottom k of the union of several samples (per bucket,
    each n-gram's smallest key) is the sample of all their documents, whatever the partitioning.
    """

    def __init__(self, num_buckets: int, k: int = 3) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.num_buckets, self.k = int(num_buckets), int(k)
        self.slots = np.zeros((3, self.num_buckets * self.k), np.int64)  # key, arena offset, length (-1: free)
        self.slots[2] = -1
        self.limit = np.full(self.num_buckets, _M32 + 1, np.int64)  # largest kept key of a full bucket
        self.arena = np.zeros(1 << 16, np.uint8)
        self.used = np.zeros(1, np.int64)

    def _grow(self, need: int) -> None:
        """Compact the arena to the kept n-grams (replaced ones leave garbage), with room for ``need`` more."""
        live = np.flatnonzero(self.slots[2] >= 0)
        size = int(self.slots[2, live].sum())
        arena = np.zeros(max(self.arena.shape[0], 2 * (size + need)), np.uint8)
        offset = 0
        for i in live:
            a, m = self.slots[1, i], self.slots[2, i]
            arena[offset:offset + m] = self.arena[a:a + m]
            self.slots[1, i] = offset
            offset += m
        self.arena, self.used[0] = arena, offset

    def rows(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(bucket int32, key int64, n-gram) of every kept n-gram."""
        live = np.flatnonzero(self.slots[2] >= 0)
        grams = [bytes(self.arena[a:a + m]).decode("utf-8", "replace")
                 for a, m in zip(self.slots[1, live], self.slots[2, live])]
        return (live // self.k).astype(np.int32), self.slots[0, live].copy(), grams

    def as_dict(self) -> dict[int, list[str]]:
        """Bucket -> its n-grams, smallest key first."""
        result: dict[int, list[tuple[int, bytes, str]]] = {}
        for bucket, key, gram in zip(*self.rows()):
            result.setdefault(int(bucket), []).append((int(key), gram.encode("utf-8"), gram))
        return {b: [g for _, _, g in sorted(v)] for b, v in result.items()}


def _run(texts, n, seed, hash_kind, num_buckets, mode, lr_t, weights, groups, counts, want_stats=False,
         sample=None, doc_seeds=None):
    chunks = _chunks(texts)
    total = sum(len(c) for c in chunks)
    num_words = np.zeros(total, np.int64)
    num_feats = np.zeros(total, np.int64)
    stats = np.zeros((total if want_stats else 1, 3), np.int64)
    table = _class_table()
    scratch = np.empty(4096, np.uint8)  # the last tokens of a document (+ SHA-256 padding); grown on demand
    work = num_buckets if mode == 2 else 1
    doc_counts, touched = np.zeros(work, np.int64), np.zeros(work + 1, np.int64)
    memo_key, memo_val, memo_off, memo_arena, memo_used = _sha_memo(num_buckets if hash_kind == "sha256" else 0)
    state = np.zeros(6, np.int64)
    tt = np.zeros((_TOKEN_SLOTS if want_stats else 1, 4), np.int64)
    tt_slots = np.zeros(tt.shape[0] // 2 + 1, np.int64)
    tt_rows = np.zeros((tt_slots.shape[0], 4), np.int64)
    sw, sw_arena = _stopword_table(int(seed))
    if sample is None:
        sample_k, seeds, smp, smp_arena, smp_used, smp_limit = 0, np.zeros(1, np.int64), np.zeros((3, 1), np.int64), \
            np.zeros(1, np.uint8), np.zeros(1, np.int64), np.zeros(1, np.int64)
    else:
        sample_k, seeds, smp, smp_used, smp_limit = sample.k, _doc_seed(doc_seeds), sample.slots, sample.used, \
            sample.limit
    kernel = _kernel(mode, hash_kind == "sha256", want_stats, sample is not None)
    window = np.zeros(int(n) + 72, np.int64)  # the kernel's token window and SHA-256 work arrays
    encoded = []
    row = 0
    for chunk in chunks:
        data0, data1, starts, ends, which = _prepare(chunk)
        r1 = row + len(chunk)
        w_slice = weights[row:r1] if mode == 0 else weights
        g_slice = groups[row:r1] if mode == 1 else groups
        s_slice = stats[row:r1] if want_stats else stats
        seed_slice = seeds[row:r1] if sample is not None else seeds
        out = np.empty(1 << 16 if mode == 2 else 1, np.uint8)
        out_offsets = np.zeros(len(chunk) + 1, np.int64)
        doc, skip = 0, 0
        while True:
            if sample is not None:
                smp_arena = sample.arena
            doc, skip, need, grow = kernel(
                data0, data1, starts, ends, which, table, int(n), int(seed),
                int(num_buckets), lr_t, w_slice, g_slice, counts, num_words[row:r1],
                num_feats[row:r1], scratch, doc, skip, doc_counts, touched, out, out_offsets, memo_key, memo_val,
                memo_off, memo_arena, memo_used, s_slice, state, tt, tt_slots, tt_rows, sw, sw_arena,
                sample_k, seed_slice, smp, smp_arena, smp_used, smp_limit, window)
            if grow == 0:
                break
            if grow == 1:  # an n-gram does not fit in scratch
                scratch = np.empty(max(need, 2 * scratch.shape[0]), np.uint8)
            elif grow == 2:  # the encoded output needs room for the next document
                grown = np.empty(max(need, 2 * out.shape[0]), np.uint8)
                grown[:out.shape[0]] = out
                out = grown
            elif grow == 3:  # the token table is half full
                bigger = np.zeros((need, 4), np.int64)
                bigger[:tt.shape[0]] = tt
                tt, tt_slots = bigger, np.concatenate([tt_slots, np.zeros(need // 2, np.int64)])
                tt_rows = np.zeros((tt_slots.shape[0], 4), np.int64)
                _rehash_tokens(tt, tt_slots, state, need - 1, tt_rows)
            else:  # the sample's arena is full
                sample._grow(need)
        if mode == 2:
            encoded.append((out, out_offsets))
        row = r1
    return num_words, num_feats, encoded, stats


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
    num_words, _, _, _ = _run(texts, n, seed, hash_kind, num_buckets, 0, lr_t, weights, dummy_groups,
                              dummy_counts)
    return weights, num_words


def count_batch(texts, groups: np.ndarray, counts: np.ndarray, n: int = 2, seed: int = 0,
                hash_kind: str = "murmur3", sample: NgramSample | None = None,
                doc_hashes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Add each document's n-gram bucket counts into counts[groups[i], :] in place.

    counts: int64 [G, B] (C-contiguous, modified in place); groups: int64 [N] in [0, G).
    With ``sample`` (an :class:`NgramSample` of B buckets), every n-gram is also offered to it, keyed
    by ``doc_hashes`` (int64 [N], each document's content hash).
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
    if sample is not None:
        if sample.num_buckets != num_buckets:
            raise ValueError(f"the sample has {sample.num_buckets} buckets but counts has {num_buckets}")
        doc_hashes = np.ascontiguousarray(doc_hashes, dtype=np.int64)
        if doc_hashes.shape != (len(texts),):
            raise ValueError(f"doc_hashes must have shape ({len(texts)},) with a sample")
    dummy_lr = np.zeros((1, 1), np.float64)
    dummy_w = np.zeros((1, 1), np.float64)
    num_words, num_feats, _, _ = _run(texts, n, seed, hash_kind, num_buckets, 1, dummy_lr, dummy_w,
                                      groups, counts, sample=sample, doc_seeds=doc_hashes)
    return num_feats, num_words


def features_batch(texts, num_buckets: int, n: int = 2, seed: int = 0,
                   hash_kind: str = "murmur3", stats: bool = False):
    """Each document's sparse hashed n-gram counts, encoded once so that fit and score need no text.

    Returns (features: pa.LargeBinaryArray [N], num_features int64 [N], num_words int64 [N]), and
    with ``stats=True`` also int64 [N, 3]: each document's top_word_count, informative_words and
    numeric_words (:func:`oracle_stats`), computed in the same pass.  A document's bytes are its
    distinct buckets, in the order they first occur, as unsigned LEB128 varint pairs (bucket, count);
    null documents get empty features.  Use :func:`score_features` and :func:`count_features` on them.
    """
    _check(n, num_buckets, seed, hash_kind)
    dummy = np.zeros((1, 1))
    num_words, num_feats, encoded, doc_stats = _run(texts, n, seed, hash_kind, num_buckets, 2, dummy, dummy,
                                                    np.zeros(1, np.int64), np.zeros((1, 1), np.int64),
                                                    want_stats=stats)
    arrays = [pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(off) - 1,
                                               [None, pa.py_buffer(off), pa.py_buffer(out[:off[-1]].copy())])
              for out, off in encoded]
    merged = pa.concat_arrays(arrays) if arrays else pa.array([], pa.large_binary())
    return (merged, num_feats, num_words, doc_stats) if stats else (merged, num_feats, num_words)


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
        _decode(data, off, 0, lr_t, weights[row:row + rows], _NONE, np.zeros((1, 1), np.int64), _NONE)
        row += rows
    return weights


def count_features(features, groups: np.ndarray, counts: np.ndarray) -> None:
    """Add encoded features into counts[groups[i], :] in place (counts int64 [G, B]).

    With several groups the documents are counted group by group, so that one group's row of
    counts stays in cache (counting 64 fit bins of 10,000 buckets in document order cost ~3% more
    of a featurize pass)."""
    groups = np.ascontiguousarray(groups, dtype=np.int64)
    row = 0
    for data, off in _binary_parts(features):
        rows = len(off) - 1
        part = groups[row:row + rows]
        order = np.argsort(part, kind="stable") if counts.shape[0] > 1 else _NONE
        _decode(data, off, 1, np.zeros((1, 1)), np.zeros((1, 1)), part, counts, order)
        row += rows

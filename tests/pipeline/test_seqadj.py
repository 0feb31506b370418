"""Sequence adjustment on its own: a sender's stream through the adjuster to a model receiver.

The real-kernel tests (a TCP connection through a router lab) are in
tests/integration/test_tcp_rewrite.py; these drive the state machine through
the cases that are hard to produce on demand with real TCP: retransmissions
split and merged differently, holes, wrap-around, SACK, the bounds.
"""

from __future__ import annotations

import random

import pytest

from pktlab.pipeline.seqadj import ACK, FIN, MOD, RST, SYN, Segment, SeqAdjError, SeqAdjuster, SeqAdjWait, StreamMap

C, S = ("10.0.0.1", 40000), ("10.0.1.2", 8080)


def cats(data: bytes) -> bytes:
    return data.replace(b"cat", b"kitten").replace(b"horse", b"ox")


class Receiver:
    """Keeps every byte at its out position and fails on two different bytes at one place."""

    def __init__(self, isn: int) -> None:
        self.isn = isn
        self.got: dict[int, int] = {}
        self.base = 0  # positions relative to isn, unwrapped near base

    def take(self, seq: int, payload: bytes) -> None:
        d = (seq - self.isn - self.base) % MOD
        start = self.base + (d - MOD if d >= MOD // 2 else d)
        for i, b in enumerate(payload):
            old = self.got.setdefault(start + i, b)
            assert old == b, f"byte {start + i} arrived as {old!r} and later as {b!r}: the stream is corrupt"

    @property
    def nxt(self) -> int:
        n = 0
        while n in self.got:
            n += 1
        return n

    def stream(self) -> bytes:
        return bytes(self.got[i] for i in range(self.nxt))

    def sack(self) -> list[tuple[int, int]]:
        """Up to three out ranges received beyond the first gap, as 32-bit values."""
        blocks, pos, end = [], self.nxt, max(self.got, default=-1) + 1
        while pos < end and len(blocks) < 3:
            while pos < end and pos not in self.got:
                pos += 1
            lo = pos
            while pos in self.got:
                pos += 1
            if pos > lo:
                blocks.append(((self.isn + lo) % MOD, (self.isn + pos) % MOD))
        return blocks


class Path:
    """Client → adjuster → server for one stream, and the server's ACKs back through the adjuster."""

    def __init__(self, stream: bytes, handler=cats, isn: int = 1000, isn_back: int = 7000, **kw) -> None:
        self.stream, self.handler, self.isn, self.isn_back = stream, handler, isn, isn_back
        self.adj = SeqAdjuster(**kw)
        self.rx = Receiver(isn)
        self.now = 0.0
        self.acked = 0  # orig position the sender has seen acknowledged

    def send(self, s: int, e: int, *, rewrite: bool = True, lost: bool = False, flags: int = ACK):
        data = self.stream[s:e]
        seg = Segment(C[0], C[1], S[0], S[1], (self.isn + s) % MOD, self.isn_back, flags, data)
        out = self.handler(data) if rewrite else None
        self.now += 0.001
        res = self.adj.adjust(seg, out, self.now)
        seq, payload = (res.seq, res.payload) if res is not None else (seg.seq, out if out is not None else data)
        if not lost:
            self.rx.take(seq, payload)
        return res

    def ack(self, sack: bool = True) -> tuple[int, list[tuple[int, int]]]:
        """The receiver acknowledges; what the sender sees, as orig positions."""
        seg = Segment(
            S[0],
            S[1],
            C[0],
            C[1],
            self.isn_back,
            (self.isn + self.rx.nxt) % MOD,
            ACK,
            b"",
            self.rx.sack() if sack else [],
        )
        self.now += 0.001
        res = self.adj.adjust(seg, None, self.now)
        ack, blocks = (res.ack, res.sack) if res is not None else (seg.ack, seg.sack)
        pos = (ack - self.isn) % MOD
        assert pos <= len(self.stream), "the sender was acknowledged bytes it never sent"
        self.acked = max(self.acked, pos)
        return pos, [((a - self.isn) % MOD, (b - self.isn) % MOD) for a, b in blocks]


TEXT = b"".join(b"line %04d: the cat sat on the horse.\n" % i for i in range(200))


def words(data: bytes, size: int) -> list[tuple[int, int]]:
    """Segments of about ``size`` bytes that never split a word (so each word is rewritten whole)."""
    out, s = [], 0
    while s < len(data):
        e = min(s + size, len(data))
        while e < len(data) and data[e - 1 : e] not in (b" ", b"\n"):
            e += 1
        out.append((s, e))
        s = e
    return out


def test_growth_and_shrink_reach_the_receiver_as_intended_and_acks_map_back() -> None:
    p = Path(TEXT)
    for s, e in words(TEXT, 100):
        p.send(s, e)
    assert p.rx.stream() == cats(TEXT)
    pos, _ = p.ack()
    assert pos == len(TEXT)


@pytest.mark.parametrize("isn", [1000, MOD - 300, MOD - 1])
def test_retransmissions_split_and_merged_differently_get_the_same_bytes(isn: int) -> None:
    """The first pass rewrites whole words; the network loses some of it after the adjuster; every
    retransmission (other cuts, merged, partly acknowledged) lines up with what went first."""
    rng = random.Random(isn)
    p = Path(TEXT, isn=isn)
    segs = words(TEXT, 120)
    for s, e in segs:
        p.send(s, e, lost=rng.random() < 0.3)
    for _ in range(200):
        ack, _sack = p.ack()
        if ack == len(TEXT):
            break
        # a retransmission from the acknowledged point, of any length, cut anywhere
        s = max(0, ack - rng.randrange(0, 60))
        e = min(len(TEXT), s + rng.randrange(1, 400))
        p.send(s, e, lost=rng.random() < 0.2)
    assert p.rx.stream() == cats(TEXT)
    assert p.ack()[0] == len(TEXT)


def test_the_handler_rewriting_a_retransmission_again_changes_nothing() -> None:
    p = Path(TEXT)
    segs = words(TEXT, 100)
    for s, e in segs[:5]:
        p.send(s, e)
    for s, e in segs[:5]:  # the same segments again: the handler rewrites them again, same result
        p.send(s, e)
    s, e = segs[1][0] + 3, segs[3][1] - 2
    p.send(s, e)  # cut elsewhere: the handler's view of the words differs, the bytes sent do not
    for s, e in segs[5:]:
        p.send(s, e)
    assert p.rx.stream() == cats(TEXT)


def test_a_different_rewrite_of_bytes_that_passed_is_an_error_and_changes_nothing() -> None:
    p = Path(TEXT)
    segs = words(TEXT, 100)
    for s, e in segs[:3]:
        p.send(s, e)
    p.handler = lambda d: cats(d).replace(b"line", b"LINE")
    with pytest.raises(SeqAdjError, match="already went on unchanged"):
        p.send(*segs[1])
    p.send(*segs[1], rewrite=False)  # what the error verdict's accept sends: the first bytes again
    p.handler = cats
    for s, e in segs[3:]:
        p.send(s, e)
    assert p.rx.stream() == cats(TEXT)


def test_a_hole_can_be_rewritten_in_place_but_its_length_cannot_change() -> None:
    """The handler drops a segment; later ones pass; the retransmission fills the hole."""
    p = Path(TEXT)
    segs = words(TEXT, 100)
    p.send(*segs[0])
    # segs[1] dropped by the handler: never passed, never sent
    for s, e in segs[2:4]:
        p.send(s, e)
    with pytest.raises(SeqAdjError, match="later bytes have already reached the receiver"):
        p.send(*segs[1])
    same_length = lambda d: d.replace(b"sat", b"SAT")  # noqa: E731
    p.handler = same_length
    p.send(*segs[1])
    p.handler = cats
    for s, e in segs[4:]:
        p.send(s, e)
    a, b = segs[1]
    want = cats(TEXT[:a]) + same_length(TEXT[a:b]) + cats(TEXT[b:])
    assert p.rx.stream() == want


def test_sack_blocks_map_back_to_the_bytes_the_sender_sent() -> None:
    p = Path(TEXT)
    segs = words(TEXT, 100)
    p.send(*segs[0])
    p.send(*segs[1], lost=True)
    p.send(*segs[2])
    p.send(*segs[3])
    ack, sack = p.ack()
    assert ack == segs[1][0]
    assert sack == [(segs[2][0], segs[3][1])]


def test_insertions_at_segment_ends_and_starts() -> None:
    """An HTTP-style edit: a header line inserted before the blank line that ends a request."""
    req = b"GET / HTTP/1.1\r\nHost: s\r\n\r\n"
    stream = req * 3

    def addhdr(d: bytes) -> bytes:
        return d.replace(b"\r\n\r\n", b"\r\nX-Lab: 1\r\n\r\n")

    p = Path(stream, handler=addhdr)
    n = len(req)
    p.send(0, n - 4)  # the request without its final CRLFCRLF: nothing to do
    p.send(n - 4, n)  # the blank line alone: the header goes in front of it
    p.send(n, 2 * n)
    p.send(2 * n, 3 * n)
    p.send(n - 4, 2 * n + 5)  # a retransmission over all of it
    assert p.rx.stream() == addhdr(stream)
    assert p.ack()[0] == len(stream)


def test_acknowledged_edits_are_forgotten_and_a_retransmission_reaching_back_further_is_trimmed() -> None:
    p = Path(TEXT, history=200)
    segs = words(TEXT, 100)
    for s, e in segs:
        p.send(s, e)
        p.ack()
    m = p.adj.connections[SeqAdjuster.key(Segment(C[0], C[1], S[0], S[1], 0, 0, 0, b""))].dirs[C].map
    assert len(m.edits) <= 12  # what the last 200 acknowledged bytes held
    res = p.send(segs[-1][0] - 50, segs[-1][1])  # bytes still known: sent exactly
    assert res is not None and res.trimmed == 0
    res = p.send(segs[-1][0] - 500, segs[-1][1])  # reaching back past the history: cut to what is known
    assert res is not None and res.trimmed > 0
    assert p.rx.stream() == cats(TEXT)


def test_rewrites_beyond_the_edit_bound_are_refused() -> None:
    p = Path(TEXT, max_edits=4)
    segs = words(TEXT, 40)
    n = 0
    with pytest.raises(SeqAdjError, match="not yet acknowledged"):
        for s, e in segs:
            p.send(s, e)
            n += 1
    p.send(*segs[n], rewrite=False)
    p.ack()  # acknowledging frees the bound
    for s, e in segs[n + 1 :]:
        p.send(s, e)
        p.ack()
    a, b = segs[n]
    assert p.rx.stream() == cats(TEXT[:a]) + TEXT[a:b] + cats(TEXT[b:])


def test_state_ends_after_rst_or_both_fins_and_after_idle_time() -> None:
    p = Path(TEXT, linger=5.0, idle_timeout=60.0)
    p.send(0, 100)
    assert len(p.adj) == 1
    p.send(100, 200, flags=ACK | RST)
    p.now += 10
    p.ack()  # any later call sweeps
    assert len(p.adj) == 0

    q = Path(TEXT, linger=5.0)
    q.send(0, len(TEXT), flags=ACK | FIN)
    fin_back = Segment(S[0], S[1], C[0], C[1], q.isn_back, (q.isn + len(cats(TEXT)) + 1) % MOD, ACK | FIN, b"")
    q.adj.adjust(fin_back, None, q.now)
    last = Segment(C[0], C[1], S[0], S[1], (q.isn + len(TEXT) + 1) % MOD, q.isn_back + 1, ACK, b"")
    q.adj.adjust(last, None, q.now)
    assert len(q.adj) == 1  # still there for a late retransmission
    q.now += 6
    q.ack()
    assert len(q.adj) == 0

    r = Path(TEXT, idle_timeout=60.0)
    r.send(0, 100)
    r.now += 61
    r.send(100, 100)  # an empty segment: no new state, the old one has expired
    assert len(r.adj) == 0


def test_a_new_syn_on_the_same_ports_starts_afresh() -> None:
    p = Path(TEXT)
    p.send(0, 100)
    syn = Segment(C[0], C[1], S[0], S[1], 555, 0, SYN, b"")
    assert p.adj.adjust(syn, None, p.now) is None
    assert len(p.adj) == 0


def test_a_first_length_change_behind_bytes_already_sent_is_refused() -> None:
    adj = SeqAdjuster()
    seg = Segment(C[0], C[1], S[0], S[1], 1000, 1, ACK, b"a cat")
    with pytest.raises(SeqAdjError, match="already went on"):
        adj.adjust(seg, b"a kitten", 0.0, sent_end=1100)  # the dispatcher saw bytes up to 1100 go
    assert len(adj) == 0
    assert adj.adjust(seg, b"a kitten", 0.0, sent_end=1000).payload == b"a kitten"


def test_the_cut_map_splits_the_out_stream_consistently() -> None:
    """Any cut of the orig stream gives consecutive pieces of the out stream (random edits)."""
    rng = random.Random(7)
    for _ in range(200):
        m = StreamMap()
        data = bytes(rng.randrange(256) for _ in range(300))
        pos = 0
        while pos < 280:
            a = pos + rng.randrange(0, 20)
            b = a + rng.randrange(0, 8)
            m.add_edit(a, b, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))))
            m.mark_passed(pos, b)
            pos = b + 1
        whole = m.render(0, 300, data)
        assert len(whole) == m.cut(300) - m.cut(0)
        cuts = sorted({0, 300, *(rng.randrange(300) for _ in range(6))})
        pieces = b"".join(m.render(x, y, data[x:y]) for x, y in zip(cuts, cuts[1:], strict=False))
        assert pieces == whole
        for q in range(m.cut(0), m.cut(300) + 1):
            p = m.uncut(q)
            assert m.cut(p) <= q and (p >= 300 or m.cut(p + 1) > q)


def test_a_segment_after_a_gap_waits_and_passes_once_the_gap_is_filled() -> None:
    """Reordering: with wait=True a segment that starts after bytes that have not passed is kept
    back (nothing changes), so that the bytes before it can still be grown when they come."""
    p = Path(TEXT)
    segs = words(TEXT, 100)
    p.send(*segs[0])
    late = Segment(C[0], C[1], S[0], S[1], (p.isn + segs[2][0]) % MOD, p.isn_back, ACK, TEXT[slice(*segs[2])])
    with pytest.raises(SeqAdjWait):
        p.adj.adjust(late, cats(late.payload), p.now, wait=True)
    p.send(*segs[1])  # the gap is filled, grown
    res = p.adj.adjust(late, cats(late.payload), p.now, wait=True)
    p.rx.take(res.seq, res.payload)
    for s, e in segs[3:]:
        p.send(s, e)
    assert p.rx.stream() == cats(TEXT)


def test_bytes_inserted_before_a_segments_first_byte_arrive() -> None:
    """An insertion at a segment's very start must go with that segment, not with the one before (sent)."""
    stream = b"abcdefghi"
    p = Path(stream, handler=lambda d: b"X" + d if d.startswith(b"d") else d)
    p.send(0, 3)
    p.send(3, 6)
    p.send(6, 9)
    p.send(3, 9)  # a retransmission over both: the same bytes again
    assert p.rx.stream() == b"abcXdefghi"
    assert p.ack()[0] == len(stream)


def test_common_affixes_agree_with_a_byte_by_byte_scan() -> None:
    """The halving search (slice compares) finds the same prefix and non-overlapping suffix as a plain scan."""
    import random

    from pktlab.pipeline.seqadj import common_affixes as _common_affixes

    def scan(a: bytes, b: bytes) -> tuple[int, int]:
        n = min(len(a), len(b))
        p = 0
        while p < n and a[p] == b[p]:
            p += 1
        s = 0
        while s < n - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
            s += 1
        return p, s

    rnd = random.Random(15)
    for _ in range(20000):
        a = bytes(rnd.choice(b"ab~") for _ in range(rnd.randint(0, 12)))
        b = bytes(rnd.choice(b"ab~<>") for _ in range(rnd.randint(0, 12)))
        if rnd.random() < 0.5:  # mostly a with something replaced, as rewrites are
            b = a[: rnd.randint(0, len(a))] + b + a[rnd.randint(0, len(a)) :]
        assert _common_affixes(a, b) == scan(a, b), (a, b)
    big = b"0123456789abcde~" * 90
    assert _common_affixes(big, big.replace(b"~", b"<~>", 1)) == (15, len(big) - 16)

"""Packet filters in tcpdump syntax, compiled by libpcap to classic BPF for the kernel.

At a netfilter hook a packet starts at its IP header, so filters are compiled
for libpcap's raw-IP link type: one program serves IPv4 and IPv6 chains.
iptables' ``bpf`` match (xt_bpf) runs the program in the kernel, in front of
the NFQUEUE target (``attach(filter=...)``) or of an offloaded verdict
(``Session.offload``).  The same program filters offline packets
(:meth:`BpfProgram.matches`), so replayed captures select what a live queue
would.

libpcap is called through ctypes (``pcap_open_dead`` + ``pcap_compile``,
``bpf_image`` for the ``tcpdump -d`` listing, ``pcap_offline_filter``); no
filter compiler is written here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass
from html import escape
from typing import Any, NamedTuple

from ..errors import FilterError, MissingToolError

# xt_bpf keeps the program in the rule: at most 64 instructions (XT_BPF_MAX_NUM_INSTR)
XT_BPF_MAX_INSTRUCTIONS = 64
LINKS = {"raw": 12, "ethernet": 1}  # libpcap's DLT_RAW (Linux value) and DLT_EN10MB
_SNAPLEN = 262144


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _Program(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn))]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


_lib: ctypes.CDLL | None = None
_lock = threading.Lock()  # libpcap's filter compiler is not thread-safe before 1.8 and keeps error state


def _libpcap() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise MissingToolError(
                "libpcap is not installed, so tcpdump filters cannot be compiled; run `make setup` "
                "(apt-get install libpcap-dev)"
            ) from None
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.restype = ctypes.c_int
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(_Program),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_Program)]
        lib.bpf_image.restype = ctypes.c_char_p
        lib.bpf_image.argtypes = [ctypes.POINTER(_Insn), ctypes.c_int]
        lib.pcap_offline_filter.restype = ctypes.c_int
        lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_Program), ctypes.POINTER(_PktHdr), ctypes.c_char_p]
        _lib = lib
    return _lib


class Instruction(NamedTuple):
    """One classic BPF instruction."""

    code: int
    jt: int
    jf: int
    k: int


@dataclass(frozen=True)
class BpfProgram:
    """A compiled filter: its expression, link type and instructions."""

    expr: str
    link: str
    instructions: tuple[Instruction, ...]

    def __post_init__(self) -> None:
        n = len(self.instructions)
        object.__setattr__(self, "_insns", (_Insn * n)(*(_Insn(*i) for i in self.instructions)))

    def _program(self) -> _Program:
        insns = self._insns  # type: ignore[attr-defined]
        return _Program(len(self.instructions), ctypes.cast(insns, ctypes.POINTER(_Insn)))

    def __len__(self) -> int:
        return len(self.instructions)

    @property
    def bytecode(self) -> str:
        """The program as iptables' ``--bytecode`` takes it (the format of ``nfbpf_compile``)."""
        body = ",".join(f"{i.code} {i.jt} {i.jf} {i.k}" for i in self.instructions)
        return f"{len(self.instructions)},{body}"

    def match_args(self) -> list[str]:
        """The iptables match that runs this program in the kernel."""
        if len(self.instructions) > XT_BPF_MAX_INSTRUCTIONS:
            raise FilterError(
                f"the filter {self.expr!r} compiles to {len(self.instructions)} BPF instructions and the "
                f"kernel's bpf match takes at most {XT_BPF_MAX_INSTRUCTIONS}; simplify the expression"
            )
        return ["-m", "bpf", "--bytecode", self.bytecode]

    def tagged(self, words: tuple[int, ...]) -> BpfProgram:
        """The same filter preceded by loads of ``words`` (constants the next instruction overwrites).

        Used to name a kernel rule by its program (see ``rules.front_id``);
        jumps are relative, so the program's meaning does not change.
        """
        tag = tuple(Instruction(0x00, 0, 0, w & 0xFFFFFFFF) for w in words)  # BPF_LD | BPF_W | BPF_IMM
        return BpfProgram(self.expr, self.link, tag + self.instructions)

    def dump(self) -> str:
        """The program as ``tcpdump -d`` lists it (libpcap's ``bpf_image``)."""
        lib = _libpcap()
        insns = self._insns  # type: ignore[attr-defined]
        with _lock:
            return "\n".join(lib.bpf_image(ctypes.byref(insns[n]), n).decode() for n in range(len(self.instructions)))

    def matches(self, data: Any) -> bool:
        """Whether the filter accepts ``data``: a packet's bytes (of this program's link type) or a ``pktlab.Packet``.

        A packet of which only a part was copied (a session's ``copy=``) is filtered as libpcap
        filters a capture cut by its snap length: the program sees the copied bytes and the
        packet's whole length, and a test of a byte beyond the copy fails.
        """
        lib = _libpcap()
        if hasattr(data, "copied"):  # a Packet: its copied bytes, its whole length
            length, data = len(data), data.raw[: data.copied]
        else:
            data = bytes(data)
            length = len(data)
        hdr = _PktHdr(_Timeval(0, 0), len(data), length)
        prog = self._program()
        return bool(lib.pcap_offline_filter(ctypes.byref(prog), ctypes.byref(hdr), data))

    def __str__(self) -> str:
        return self.dump()

    def _repr_html_(self) -> str:
        return (
            f"<div><b>{escape(self.expr or '(every packet)')}</b> ({self.link} link, "
            f"{len(self.instructions)} instructions)<pre>{escape(self.dump())}</pre>"
            f'iptables: <code>{escape(" ".join(self.match_args()[:3]))} "{escape(self.bytecode)}"</code></div>'
        )


def compile(expr: str, link: str = "raw", optimize: bool = True) -> BpfProgram:  # noqa: A001 - the tool's verb
    """Compile a tcpdump filter expression with libpcap.

    ``link`` is ``"raw"`` (packets starting at the IP header, as at netfilter
    hooks and in pktlab's records) or ``"ethernet"`` (Ethernet captures).
    Invalid expressions raise :class:`FilterError` carrying libpcap's message.
    """
    if not isinstance(expr, str):
        raise FilterError(f"a filter is a tcpdump expression string, not {type(expr).__name__}")
    if link not in LINKS:
        raise FilterError(f"unknown link type {link!r}; use one of {', '.join(LINKS)}")
    lib = _libpcap()
    with _lock:
        handle = lib.pcap_open_dead(LINKS[link], _SNAPLEN)
        if not handle:
            raise FilterError("libpcap could not open a handle to compile filters with; is libpcap working?")
        prog = _Program()
        try:
            if lib.pcap_compile(handle, ctypes.byref(prog), expr.encode(), int(optimize), 0xFFFFFFFF) != 0:
                why = (lib.pcap_geterr(handle) or b"unknown error").decode(errors="replace")
                raise FilterError(f"libpcap cannot compile the filter {expr!r}: {why}; check its tcpdump syntax")
            out = tuple(
                Instruction(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                for i in range(prog.bf_len)
            )
            lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)
    return BpfProgram(expr, link, out)

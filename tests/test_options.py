"""attach()'s options are declared once (pktlab.options): Session, the queue and %pktlab attach agree with it."""

from __future__ import annotations

import inspect

from pktlab.kernel.queue import QueueSource
from pktlab.notebook.magic import make_parsers
from pktlab.options import ATTACH, DEFAULT, NETFILTER_HOOKS
from pktlab.pipeline.session import Session


def test_session_takes_every_declared_option_with_its_default() -> None:
    params = {n: p for n, p in inspect.signature(Session.__init__).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}  # fmt: skip
    assert set(params) == {o.name for o in ATTACH} | {"netns"}
    assert {o.name: o.default for o in ATTACH} == {n: p.default for n, p in params.items() if n != "netns"}


def test_the_queue_has_the_declared_defaults() -> None:
    params = inspect.signature(QueueSource.__init__).parameters
    assert (params["max_len"].default, params["sock_bytes"].default) == (DEFAULT.max_len, DEFAULT.sock_bytes)


def test_the_magic_offers_each_option_as_declared() -> None:
    att = make_parsers()["attach"]
    defaults = vars(att.parse_args(["3"]))
    usage = " ".join(att.format_help().split())
    for opt in ATTACH:
        assert opt.help and "\n" not in opt.help, opt.name
        if not opt.magic:
            assert opt.name not in defaults, opt.name
            continue
        assert defaults[opt.name] == opt.default, opt.name
        assert opt.magic_flag() in usage and " ".join(opt.help.split()) in usage, opt.name
        if opt.choices:
            assert vars(att.parse_args(["3", opt.magic_flag(), opt.choices[-1]]))[opt.name] == opt.choices[-1]
    parsed = att.parse_args(["3", "--hook", "forward", "--no-gso", "--deadline", "none", "--max-len", "9", "--host"])
    assert (parsed.hook, parsed.gso, parsed.deadline, parsed.max_len, parsed.allow_host) == ("FORWARD", False, None,
                                                                                             9, True)  # fmt: skip
    assert NETFILTER_HOOKS == ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


def test_replay_takes_every_declared_replay_option_with_its_default() -> None:
    from pktlab.options import REPLAY

    params = {n: p for n, p in inspect.signature(Session.from_capture).parameters.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}  # fmt: skip
    assert {o.name: o.default for o in REPLAY} == {n: p.default for n, p in params.items()}
    rp = make_parsers()["replay"]
    defaults = vars(rp.parse_args(["lab-udp"]))
    assert all(defaults[o.name] == o.default for o in REPLAY)
    assert rp.parse_args(["lab-udp", "--deadline", "none", "--hook", "forward"]).deadline is None

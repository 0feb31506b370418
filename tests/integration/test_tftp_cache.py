"""The TFTP cache of notebook 06 on the real kernel: a repeat read is served by the router, the server never sees it."""

from __future__ import annotations

import pktlab
from pktlab import Lab, TftpCache
from tests.conftest import needs_live

pytestmark = needs_live


def test_a_repeat_read_is_served_from_the_cache_and_never_reaches_the_server(router_lab: Lab, queue_num: int) -> None:
    s = pktlab.attach(queue_num, rule="-p udp", hook="FORWARD", netns=router_lab.router)
    cache = TftpCache(s)
    s.add_handler(cache, "tftp-cache")
    try:
        first = router_lab.tftp(5000, filename="a.bin")  # 10 blocks; the last one short
        exact = router_lab.tftp(1024, filename="b.bin")  # two full blocks and an empty one
        again = router_lab.tftp(5000, filename="a.bin", timeout=5)
        again_b = router_lab.tftp(1024, filename="b.bin", timeout=5)
        lost = router_lab.tftp(700, filename="c.bin", serve=False, timeout=1)
    finally:
        s.detach()
    assert first["complete"] and first["ok"] and first["server"]["served"]
    assert exact["complete"] and exact["ok"] and exact["server"]["served"]
    assert cache.files == {"a.bin": 5000, "b.bin": 1024} and cache.misses == 3
    for got, size in ((again, 5000), (again_b, 1024)):
        assert got["complete"] and got["ok"] and got["bytes"] == size
        assert got["server"] == {"served": False, "reason": "no request"}  # the request stopped at the router
        assert got["from"][0] == router_lab.server.addr  # answered in the server's name
    assert cache.hits == 2 and not cache.serving and not s.errors
    assert not lost["complete"]  # not cached, no server: nothing answers
    df = s.df
    assert (df.direction == "sent").sum() == 10 + 3  # every block of the two repeats

# Reference solution of the firewall assignment (for teachers; the grader gives it full marks).
connections = set()


def flow(pkt):
    a, b = (pkt.ip.src, pkt.tcp.sport), (pkt.ip.dst, pkt.tcp.dport)
    return (a, b) if a < b else (b, a)


def firewall(pkt):
    t = pkt.tcp
    if t is None:
        return None  # not TCP: not the firewall's business
    key = flow(pkt)
    if t.flags.syn and not t.flags.ack:
        if t.dport == 9001:
            connections.add(key)
            return pkt.accept()
        return pkt.drop()
    if key in connections:
        if t.flags.rst:
            connections.discard(key)
        return pkt.accept()
    return pkt.drop()

# Reference solution of the NAT assignment (for teachers; the grader gives it full marks).
INSIDE = "10.77.1."  # the client's network
OUTSIDE = "10.77.2.1"  # the router's address on the server's side
next_port = 40000  # the port the next new flow gets
back = {}  # (protocol, port) -> (client address, client port or echo id)


def ports(pkt):
    """The packet's layer whose ports (TCP, UDP) or echo id (ICMP) the NAT rewrites, or None."""
    if pkt.tcp is not None or pkt.udp is not None:
        return pkt.tcp or pkt.udp
    if pkt.icmp is not None and pkt.icmp.type in (0, 8):
        return pkt.icmp
    return None


def nat(pkt):
    global next_port
    if pkt.ip is None:
        return None
    t = ports(pkt)
    if pkt.ip.src.startswith(INSIDE):  # outbound: leave from the router's address, from the flow's port
        if t is None:
            return pkt.drop()  # nothing to tell its replies apart by
        state = pkt.flow.state
        if "port" not in state:
            state["port"] = next_port
            back[pkt.proto, next_port] = (pkt.ip.src, t.id if pkt.icmp is not None else t.sport)
            next_port += 1
        pkt.ip.src = OUTSIDE
        if pkt.icmp is not None:
            t.id = state["port"]
        else:
            t.sport = state["port"]
        return pkt.accept()
    if pkt.ip.dst == OUTSIDE:  # inbound: a reply of a flow goes back to its client; anything else is dropped
        port = None if t is None else t.id if pkt.icmp is not None else t.dport
        if (pkt.proto, port) not in back:
            return pkt.drop()
        addr, their_port = back[pkt.proto, port]
        pkt.ip.dst = addr
        if pkt.icmp is not None:
            t.id = their_port
        else:
            t.dport = their_port
        return pkt.accept()
    return None

# Reference solution of the policer assignment (for teachers; the grader gives it full marks).
RATE = 50_000  # bytes per second a flow may send
BURST = 5_000  # the bucket's size in bytes


def police(pkt):
    state = pkt.flow.state if pkt.flow is not None else None
    if state is None:
        return None  # not IP: not the policer's business
    if "tokens" not in state:
        state["tokens"], state["last"] = BURST, pkt.time  # a new flow starts with a full bucket
    state["tokens"] = min(BURST, state["tokens"] + RATE * (pkt.time - state["last"]))
    state["last"] = pkt.time
    if len(pkt) <= state["tokens"]:
        state["tokens"] -= len(pkt)
        return pkt.accept()
    return pkt.drop()

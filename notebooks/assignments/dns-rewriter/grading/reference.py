# Reference solution of the DNS rewriter assignment (for teachers; the grader gives it full marks).
def rewrite_dns(pkt):
    d = pkt.dns
    if d is None or not d.qr or d.qname != "lab.example.":
        return None
    for rr in d.answers:
        if rr.type == 1:  # an A record
            rr.address = "10.77.2.99"
    return pkt.accept()

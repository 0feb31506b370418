"""Talking to the kernel: the NFQUEUE source, iptables rules, offloads, BPF filters, namespaces, /proc."""

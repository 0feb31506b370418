"""Measurements: NetPIPE-style throughput and packet-path timelines."""

"""The flow: sources (queue, capture) into one dispatcher, the handler chain, held packets, the record, ``Session``."""

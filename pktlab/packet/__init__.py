"""The packet model: ``Packet``, verdicts, protocol views (built in and user-defined), display."""

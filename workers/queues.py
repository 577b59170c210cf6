"""Queue names. Every enqueue names one of these constants."""

# Fetching and ingesting incoming mail; latency matters most, so workers take it first.
INBOUND = "inbound"
# Sending the outbox.
OUTBOUND = "outbound"
# Everything else: housekeeping, heartbeats, reconcilers.
DEFAULT = "default"

ALL_QUEUES = (INBOUND, OUTBOUND, DEFAULT)

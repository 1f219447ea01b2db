"""The online loop's ZeroMQ links: typed PUSH/PULL and PUB/SUB ends built from StreamConfig."""

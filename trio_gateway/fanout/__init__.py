"""Fan-out: the subscription index and recovery (hub), the writes to sockets (flusher,
outbox), and what publishers hand over (publication, broadcaster). Knows no socket protocol."""

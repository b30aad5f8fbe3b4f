"""One WebSocket client's session: credentials, the connection lifecycle, the keepalive and
the handlers of client messages. Reaches the socket only through transport/."""

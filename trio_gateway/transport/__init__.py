"""Bytes on sockets: listeners, the WebSocket adapter (wsproto) and the HTTP/1.1 loop (h11).
Knows no handler of its own beyond the protocol it speaks."""

"""Calls from the gateway to the operator's backend over HTTP: the command proxy
(`command_url`) and the connect hook (`connect_url`), through one pooled httpx client."""

"""Commands (seed 002): a client calls a named command, the gateway runs it in-process or at
the backend, and answers with an event. `Commands` is the registry an embedding program
fills; runner.py is the message handler."""

from .registry import Answer, Caller, CommandError, CommandHandler, Commands

__all__ = ["Answer", "Caller", "CommandError", "CommandHandler", "Commands"]

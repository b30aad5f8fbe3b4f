"""Running the gateway: settings, the supervisor, signals, worker processes and the CLI."""

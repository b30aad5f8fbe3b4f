"""What the gateway tells its operator: structured logs."""

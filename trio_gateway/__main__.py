"""`python -m trio_gateway` is the `trio-gateway` command."""

from .runtime.cli import main

main()

"""`python -m trio_gateway` is the `trio-gateway` command."""

from .cli import main

main()

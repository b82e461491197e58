"""Allow ``python -m vouch``."""

from vouch.cli.main import main

main()

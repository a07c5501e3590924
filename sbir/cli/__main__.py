"""`python -m sbir.cli …`: the same command line as the `sbir` script."""

from sbir.cli import main

main()

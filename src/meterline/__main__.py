"""`python -m meterline` runs the `meterline` command."""

from meterline.cli import main

main()

"""``python -m edge``: the same command line as ``raman-edge``."""
from .cli import main

main(prog_name="raman-edge")

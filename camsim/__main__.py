"""`python -m camsim`: the same as `vms camsim` (venv interpreter)."""

from camsim.cli import main

main()

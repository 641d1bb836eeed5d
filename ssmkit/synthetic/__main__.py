"""``python -m ssmkit.synthetic fit -c configs/synthetic/smoke.yaml``."""

from .cli import main

main()

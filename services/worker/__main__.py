"""`python -m mlxserve.services.worker`: run one model's worker process."""

from .main import main

raise SystemExit(main())

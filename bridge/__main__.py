"""``python -m bridge`` runs the login-audit-bridge command."""

import sys

from bridge.cli import main

sys.exit(main())

"""login-audit-bridge: login hooks in, OCSF-shaped Avro login events out.

Kept free of imports on purpose: the hook shim imports this package once per login.
"""

__version__ = "0.1.0"

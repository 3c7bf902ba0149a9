"""Pipeline stages ``patching`` and ``circuits`` (filled in by the patching-stage work)."""

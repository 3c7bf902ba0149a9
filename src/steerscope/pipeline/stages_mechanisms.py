"""Pipeline stages ``freeze``, ``svv`` and ``sparsify`` (filled in by the mechanisms-stage work)."""

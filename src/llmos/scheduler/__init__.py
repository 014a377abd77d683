"""Pure placement: a cluster snapshot in, a plan with reasons out (``plan.plan``).

No I/O and no clock; it imports no other LLMOS module. Types are in ``model``,
filter and score plugins in ``filters`` and ``scores``, the two solvers in ``solvers``.
"""

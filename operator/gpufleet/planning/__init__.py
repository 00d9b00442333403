"""Pure decisions: spec + observation (+ time, passed in) → plain data.

No I/O, no clock, no cluster or cloud clients (enforced by import-linter).
"""

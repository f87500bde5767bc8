"""The controller side of attestation: nonces, enrolment, quote verification, key release, drift reports.

State lives in one embedded SQLite file (`store.py`). Every check that refuses something raises
`AttestationRejected` with a stable kebab-case `reason`, and nothing is released after a refusal.
"""

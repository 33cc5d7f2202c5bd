"""Compute-to-data (可用不可见): a buyer's approved algorithm runs over a grant's files on the
exchange's machine, and only aggregates leave.

This room is a **process sandbox plus differential privacy**. It is *not* multi-party
computation (MPC: one party, the exchange, sees the plaintext inputs) and *not* a trusted
execution environment (TEE: no hardware enclave or remote attestation; whoever runs the
exchange's machine could read the data). What it promises is narrower and checkable:

- `sandbox`: the algorithm runs under bubblewrap with no network, a read-only fixed runtime,
  the grant's files read-only, a size-limited output folder, an unprivileged uid, rlimits, a
  seccomp filter and a wall clock (see its docstring);
- `outputs`: what it leaves is accepted only as one declared JSON table of groups, each of at
  least k rows, with no identifier or personal-information column and no row that reproduces an
  input row;
- differential privacy (noise on the released aggregates) comes in `dp`.

Pure library code: no database, no HTTP. The jobs API and runner stand on it.
"""

"""Evaluation: inference-time scaling (pass@k, maj@k, best-of-k) and self-verification of a policy."""

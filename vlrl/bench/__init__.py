"""Benchmarks: commands that print figures (``vlrl bench ...``), never timed tests."""

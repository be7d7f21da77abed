"""Rollout engines behind one async protocol (vlrl.engines.base.Engine)."""

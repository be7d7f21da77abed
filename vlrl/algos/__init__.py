"""Losses and advantage estimators: plain functions over padded (batch, tokens) tensors."""

"""Environments: the multi-turn tool-use VQA env, prompt templates, action parsers."""

"""Model folders: building the tiny offline VLM and loading any Qwen2-VL-family checkpoint."""

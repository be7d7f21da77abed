"""The policy update: multimodal forward, losses, optimizer, checkpoints."""

"""vlrl: reinforcement learning for vision-language models that think with images and tools."""

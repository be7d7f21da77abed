"""The rollout manager: many trajectories at once, each interleaving engine decoding, tools and rewards."""

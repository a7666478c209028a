"""shoal's benchmark workload as a Flower app (see bench/peers_flower.py)."""

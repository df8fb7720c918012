"""What happens on a client: pure torch, no flwr import."""

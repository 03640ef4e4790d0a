"""Training (trainer.py), evaluation, plots, device choice and distributed helpers."""

"""Trainer workers: claim a job, build its training data, train a LoRA, measure recall, publish."""

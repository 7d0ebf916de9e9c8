"""Demonstrations built on the library, never imported by it: `zoo walkthrough` (the README's main
job) and the digits check of layer-wise pretraining (`python -m zoo.demos.digits`)."""

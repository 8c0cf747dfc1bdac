"""Benchmarks of Offsite's control plane; see bench/README.md."""

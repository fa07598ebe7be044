"""Benchmarks of regionclip-min: `run.py` (make bench), `concept_extraction.py`, and the toy benchmark in `toy/`."""

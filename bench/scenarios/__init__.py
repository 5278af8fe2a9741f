"""The benchmark's scenarios, one module each; `bench/run.py` drives them."""

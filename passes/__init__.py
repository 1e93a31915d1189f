"""Graph passes, one per file, each named after what it does (see nvcc_pt/pipeline.py for the order)."""

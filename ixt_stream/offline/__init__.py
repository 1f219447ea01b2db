"""The offline path: annotate a dataset with critiques -> train on it -> evaluate."""

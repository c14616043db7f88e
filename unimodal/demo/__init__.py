"""The demo data sets: small real shards written from scikit-learn's digit scans (not the training path)."""

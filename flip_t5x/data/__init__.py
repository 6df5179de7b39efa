"""Data: seqio vocabulary, preprocessors, sources and the feature converter for FLIP."""

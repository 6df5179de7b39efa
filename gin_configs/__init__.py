"""FLIP's gin files, importable as a package so `include 'gin_configs/...'` resolves from any
working directory and from a non-editable install (gin looks includes up as package resources)."""

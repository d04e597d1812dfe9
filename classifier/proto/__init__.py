"""Generated protobuf stubs (``python protos/generate.py``). Do not edit by hand."""

"""Generated protobuf / gRPC stubs (see specgrove/pb/generate.py)."""

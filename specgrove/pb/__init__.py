"""Protobuf / gRPC stubs generated from proto/ (committed; a test regenerates and diffs)."""

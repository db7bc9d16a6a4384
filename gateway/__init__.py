"""Gateway: request queue, continuous batching, OpenAI REST + SSE and gRPC streaming.

Built in the gateway issue on top of the gRPC services; it holds no model and must import
without torch.
"""

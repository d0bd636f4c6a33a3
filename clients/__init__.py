"""Sample clients: streaming client, demo runner, grpcurl smoke test."""

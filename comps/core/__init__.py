"""The service kit shared by every ChatQnA service and the gateway."""

"""The HTTP gateway and its durable state."""

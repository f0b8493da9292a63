"""LLM backends. Each module is a plugin registering one backend through `register_backends`."""

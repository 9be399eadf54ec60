"""mlxserve: an Ollama-class local LLM server on Apple's MLX."""

__version__ = "0.1.0"

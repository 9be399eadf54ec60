"""Import GGUF files (what llama.cpp and Ollama use) as mlx-lm model folders.

reader.py reads the file, architectures.py maps each architecture onto mlx-lm's implementation,
quants.py turns every ggml tensor type into MLX arrays, tokenizer.py rebuilds the vocabulary, and
convert.py runs the whole import.
"""

from .architectures import SUPPORTED_ARCHITECTURES, unpermute_rows
from .convert import check_gguf, import_gguf
from .reader import GGUFFile, read_gguf

__all__ = ["SUPPORTED_ARCHITECTURES", "GGUFFile", "check_gguf", "import_gguf", "read_gguf", "unpermute_rows"]

"""Delta-LLaVA for Hugging Face transformers."""

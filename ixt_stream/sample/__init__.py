"""Stage 1: a vLLM engine turns prompts (token ids) into Samples."""

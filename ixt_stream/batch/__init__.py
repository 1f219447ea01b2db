"""Stage 4: ConditionedSamples -> padded tensors (token-budget packing, the one tensor boundary)."""

"""Prices: the versioned price table (genai-prices snapshot plus overrides) and cost calculation."""

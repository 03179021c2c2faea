"""meterline: an LLM gateway that meters every token."""

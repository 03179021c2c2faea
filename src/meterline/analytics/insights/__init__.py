"""Insights: detectors that find the usual leaks in the stored events and price them per month.

One module per detector (`retries`, `prompt_cache`, `model_fit`, `embeddings`, `context`,
`agents`, `attribution`, `output`), each a `detect(scan) -> list[Finding]` over one window; what
they share is in `finding`, and `engine` runs them for `GET /api/v1/insights`.
"""

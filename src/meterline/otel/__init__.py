"""OpenTelemetry both ways, and Prometheus: OTLP export of GenAI spans and metrics, OTLP ingest, `/metrics`.

`names` is the one table of attribute spellings; `spans` and `export` build and send spans and
metrics from finished calls; `ingest` turns OTLP spans from instrumented apps into events and
`receiver` serves `POST /v1/traces`; `prometheus` serves `GET /metrics`. Export and ingest need
the optional `otel` extra (`pip install 'meterline[otel]'`); `/metrics` does not.
"""

OTEL_EXTRA_HINT = "install the otel extra: pip install 'meterline[otel]'"

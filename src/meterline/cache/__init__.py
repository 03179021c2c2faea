"""The response cache: exact answers by request hash, similar prompts by embedding, in memory or Redis.

`policy` decides per call whether the cache is consulted; `requests` turns a call into its cache
key and scope; `entries` is the stored answer; `backends` keep entries (an in-process LRU bounded
in MB, or Redis shared by workers and replicas); `semantic` is the vector index of prompts;
`service.ResponseCache` puts them together for the gateway.
"""

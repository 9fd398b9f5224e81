"""quantsweep's serving side: host a model behind an OpenAI-compatible endpoint and drive load at it.

`serve.loadgen` sends streamed completion requests in the study's traffic profiles (synchronous,
Poisson, constant rate, fixed concurrency) and keeps one raw `serve.records.RequestRecord` per request;
`serve.metrics` derives TTFT/TPOT/ITL/throughput from those rows (vLLM's and GuideLLM's definitions side by
side), `serve.cost` turns latency and QPS into queries per dollar, and `serve.nullserver` is an instant
local server that measures the load generator's own ceiling and backs the tests.
"""

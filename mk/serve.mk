# `make serve-load`: the longer load test of `phi4edge serve` (scripts/serve_load.py): a server on
# the embedded int4 bundle on loopback, SERVE_CLIENTS concurrent clients x SERVE_REQUESTS mixed
# requests (every answer checked against the request's lone answer), latency percentiles and
# throughput, then SERVE_BURST simultaneous requests past the queue bound (429s, then an answer).
# tests/test_server_load.py runs a short version in `make test`.
SERVE_CLIENTS  ?= 8
SERVE_REQUESTS ?= 100
SERVE_BURST    ?= 48

.PHONY: serve-load
serve-load: install
	$(PY) -m scripts.serve_load --clients $(SERVE_CLIENTS) --requests $(SERVE_REQUESTS) --burst $(SERVE_BURST)

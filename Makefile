# gst_ros: the two commands a new user needs. Both create .venv when it is missing.
SHELL := /bin/bash
.PHONY: demo test env lint bench clean-env

env:
	@scripts/env.sh

demo: env
	@scripts/demo.sh

test: env
	@scripts/test.sh

lint: env
	@.venv/bin/ruff check .

clean-env:
	rm -rf .venv

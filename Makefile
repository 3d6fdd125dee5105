# The two commands of the README: `make demo` and `make test`.
# Both create .venv and install streamrec into it on first use (a fresh clone needs
# nothing else: Python 3.11+, and PyPI for the packages and the MovieLens data).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamrec demo

lint: $(STAMP)
	$(BIN)/ruff check .

# pytest exits 5 when it collects no tests; make treats that as a failure too.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .streamrec

# effkeras: `make demo` trains, evaluates and prints a result; `make test` runs the linter
# (ruff check and format --check) and the test suite.
# Both set up .venv first (idempotent).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_DIR := runs/demo-ern18

.PHONY: setup demo test clean

setup: $(VENV)/.installed $(FASHION_MNIST)

$(VENV)/.installed: setup.py requirements-larq-zoo.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,larq]'
	$(PY) -m pip install --quiet --no-deps -r requirements-larq-zoo.txt
	touch $@

$(FASHION_MNIST):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist libgl1; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'" \
		     "(or pass --data_dir to the apps)."; \
	fi

# Train the w1a2 ERN-18 on Fashion-MNIST, evaluate it, convert it to an LCE flatbuffer (checked
# against Keras), and print accuracy, file size and op census.
demo: setup
	$(PY) -m apps.train --model=ern18 --dataset=fashion_mnist --input_shape=32,32,1 --epochs=2 \
		--steps_per_epoch=180 \
		--output_dir=$(DEMO_DIR)
	$(PY) -m apps.evaluate --checkpoint=$(DEMO_DIR)/model.keras --dataset=fashion_mnist \
		--output=$(DEMO_DIR)/evaluation.json > /dev/null
	$(PY) -m apps.convert --checkpoint=$(DEMO_DIR)/model.keras --target=arm \
		--output=$(DEMO_DIR)/ern18.tflite --report=$(DEMO_DIR)/convert.json
	$(PY) -m tools.demo_report $(DEMO_DIR)

# pytest-xdist: one worker per core (at most 4, each holds TensorFlow); a test file stays on one
# worker, so its module fixtures are built once.
test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile --durations=25 tests

clean:
	rm -rf $(VENV) runs *.egg-info

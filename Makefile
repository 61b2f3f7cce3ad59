# Developer shortcuts. The README's two commands are the supported entry points; these are extras.
PY ?= python3

.PHONY: build test bench asan lint clean

build:            ## compile bulkformer._C in place (for running from a checkout)
	$(PY) setup.py build_ext --inplace -q

test: build
	$(PY) -m pytest -q

bench: build      ## all benchmarks, side by side (slow: generates cached files on first run)
	$(PY) -m pytest benches --benchmark-enable -s -p no:cacheprovider

lint:
	ruff check . && ruff format --check .

# The engine tests under AddressSanitizer + UBSan: builds _C with sanitizers into a separate
# directory, runs the C++-facing tests against it with the sanitizer runtime preloaded, and
# leaves the normal in-place build untouched.
ASAN_DIR := build/asan
asan:
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	BULKFORMER_SANITIZE=1 $(PY) setup.py build_ext -q --build-lib $(ASAN_DIR)/lib --build-temp $(ASAN_DIR)/tmp
	cp -r bulkformer $(ASAN_DIR)/pkg && rm -f $(ASAN_DIR)/pkg/_C*.so
	rm -rf $(ASAN_DIR)/pkg/kernels && mkdir -p $(ASAN_DIR)/pkg/kernels && cp kernels/*.py $(ASAN_DIR)/pkg/kernels/
	cp $(ASAN_DIR)/lib/bulkformer/_C*.so $(ASAN_DIR)/pkg/
	mkdir -p $(ASAN_DIR)/root && rm -rf $(ASAN_DIR)/root/bulkformer && mv $(ASAN_DIR)/pkg $(ASAN_DIR)/root/bulkformer
	cd $(ASAN_DIR)/root && \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PYTHONPATH=$(CURDIR)/$(ASAN_DIR)/root $(PY) -m pytest -q -p no:cacheprovider \
	  $(CURDIR)/tests/data/test_engine.py $(CURDIR)/tests/data/test_archs4.py \
	  $(CURDIR)/tests/data/test_normalize_path.py -k "not byte_identical"

clean:
	rm -rf build .bench_cache bulkformer/_C*.so
